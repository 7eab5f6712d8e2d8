"""Collector, Tempo, Prometheus and Grafana files parse and agree with each other and compose."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deployment.support import (
    DOCKER_DIR,
    ROOT,
    compose,
    env_file_values,
    interpolate_tree,
    load_yaml,
    strings,
)

ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}


def services() -> dict[str, Any]:
    data: dict[str, Any] = interpolate_tree(compose(), ENV)["services"]
    return data


def mounted(service: str, target: str) -> Any:
    """The YAML of the host file that ``service`` mounts at ``target``."""
    for entry in services()[service]["volumes"]:
        source, mount_target = entry.split(":")[:2]
        if mount_target == target:
            return load_yaml(DOCKER_DIR / source)
    raise AssertionError(f"{service} mounts nothing at {target}")


def mount_target_of(service: str, source_suffix: str) -> str:
    for entry in services()[service]["volumes"]:
        source, target = entry.split(":")[:2]
        if source.rstrip("/").endswith(source_suffix):
            return str(target)
    raise AssertionError(f"{service} does not mount {source_suffix}")


def collector() -> dict[str, Any]:
    command = services()["otel-collector"]["command"]
    path = next(arg.partition("=")[2] for arg in command if arg.startswith("--config="))
    data: dict[str, Any] = mounted("otel-collector", path)
    return data


def tempo() -> dict[str, Any]:
    command = services()["tempo"]["command"]
    path = next(arg.partition("=")[2] for arg in command if arg.startswith("-config.file="))
    data: dict[str, Any] = mounted("tempo", path)
    return data


def prometheus() -> dict[str, Any]:
    command = services()["prometheus"]["command"]
    path = next(arg.partition("=")[2] for arg in command if arg.startswith("--config.file="))
    data: dict[str, Any] = mounted("prometheus", path)
    return data


def grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    target = mount_target_of("grafana", "grafana/provisioning")
    assert target == "/etc/grafana/provisioning"
    folder = DOCKER_DIR / "grafana" / "provisioning" / kind
    files = sorted(folder.glob("*.y*ml"))
    assert files, f"no {kind} provisioning files"
    return [load_yaml(path) for path in files]


def datasources() -> dict[str, dict[str, Any]]:
    found = {}
    for document in grafana_provisioning("datasources"):
        assert document["apiVersion"] == 1
        for source in document["datasources"]:
            found[source["uid"]] = source
    return found


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.hostname or "", parts.port or default_port


# ---- collector --------------------------------------------------------------------------


def test_collector_receives_otlp_on_all_interfaces() -> None:
    protocols = collector()["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_services_send_traces_to_the_collectors_http_receiver() -> None:
    http_port = int(collector()["receivers"]["otlp"]["protocols"]["http"]["endpoint"].split(":")[1])
    for example in (".api_env.example", ".worker_env.example"):
        host, port = host_port(env_file_values(ROOT / example)["JAEGER_URI"], 4318)
        assert (host, port) == ("otel-collector", http_port), example


def test_collector_pipeline_components_are_all_defined() -> None:
    config = collector()
    for pipeline in config["service"]["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            for name in pipeline.get(section, []):
                assert name in config[section], f"{section[:-1]} {name} is not defined"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]


def test_collector_exports_traces_to_tempos_otlp_grpc_receiver() -> None:
    config = collector()
    exporters = config["service"]["pipelines"]["traces"]["exporters"]
    assert len(exporters) == 1
    name = exporters[0]
    # The OTLP gRPC exporter's current name (`otlp` is a deprecated alias since v0.144.0).
    assert name.split("/")[0] == "otlp_grpc"
    host, port = host_port(config["exporters"][name]["endpoint"], 4317)
    assert host == "tempo"
    assert host in services()
    tempo_grpc = tempo()["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert port == int(tempo_grpc.rsplit(":", 1)[1])
    assert config["exporters"][name]["tls"]["insecure"] is True


def test_collector_uses_no_deprecated_component_names() -> None:
    config = collector()
    for name in config["exporters"]:
        assert name.split("/")[0] not in ("otlp", "otlphttp", "logging"), name
    assert "batch" not in config.get("processors", {})


# ---- Tempo ------------------------------------------------------------------------------


def test_tempo_config_has_no_tempo_2_sections() -> None:
    for section in ("ingester", "ingester_client", "compactor", "metrics_generator_client"):
        assert section not in tempo(), f"Tempo 3 rejects `{section}:`"


def test_tempo_is_a_pinned_3x_image() -> None:
    assert re.fullmatch(r"grafana/tempo:3\.\d+\.\d+", services()["tempo"]["image"])


def test_tempo_stores_everything_on_its_named_volume() -> None:
    volumes = services()["tempo"]["volumes"]
    data_mount = next(entry.split(":")[1] for entry in volumes if entry.startswith("tempo-data:"))
    assert "tempo-data" in compose()["volumes"]
    config = tempo()
    paths = [
        config["storage"]["trace"]["wal"]["path"],
        config["storage"]["trace"]["local"]["path"],
        config["backend_scheduler"]["local_work_path"],
        config["metrics_generator"]["storage"]["path"],
    ]
    assert config["storage"]["trace"]["backend"] == "local"
    for path in paths:
        assert path.startswith(data_mount + "/"), path


def test_tempo_retention_is_the_same_for_scheduler_and_worker() -> None:
    config = tempo()
    scheduler = config["backend_scheduler"]["provider"]["compaction"]["compaction"]
    assert scheduler["block_retention"] == config["backend_worker"]["compaction"]["block_retention"]


def test_tempo_metrics_generator_writes_to_prometheus_remote_write() -> None:
    config = tempo()
    (target,) = config["metrics_generator"]["storage"]["remote_write"]
    host, port = host_port(target["url"], 80)
    assert host == "prometheus"
    assert urlsplit(target["url"]).path == "/api/v1/write"
    assert port == 9090
    assert "--web.enable-remote-write-receiver" in services()["prometheus"]["command"]
    assert config["overrides"]["defaults"]["metrics_generator"]["processors"]


# ---- Prometheus -------------------------------------------------------------------------


def scrape_job(name: str) -> dict[str, Any]:
    jobs: dict[str, dict[str, Any]] = {
        job["job_name"]: job for job in prometheus()["scrape_configs"]
    }
    return jobs[name]


def test_prometheus_scrapes_the_api_on_its_container_port() -> None:
    job = scrape_job("api")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (targets,) = job["static_configs"]
    assert targets["targets"] == ["api:8080"]
    api = services()["api"]
    assert api["environment"]["PORT"] == "8080"
    assert api["ports"][0].endswith(":8080")


def test_prometheus_finds_every_worker_replica_through_dns() -> None:
    job = scrape_job("worker")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert discovery["type"] == "A"
    assert str(discovery["port"]) == services()["worker"]["environment"]["METRICS_PORT"]


def test_prometheus_static_targets_are_compose_services() -> None:
    for job in prometheus()["scrape_configs"]:
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host in services() or host == "localhost", target
    tempo_port = tempo()["server"]["http_listen_port"]
    assert scrape_job("tempo")["static_configs"][0]["targets"] == [f"tempo:{tempo_port}"]


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):  # CI runs tests/run.sh, which provides it: never skip there
            pytest.fail("promtool is missing (tests/run.sh extracts it from Debian's prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    config = DOCKER_DIR / "prometheus" / "prometheus.yml"
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_keeps_exemplars() -> None:
    assert "--enable-feature=exemplar-storage" in services()["prometheus"]["command"]


# ---- Grafana ----------------------------------------------------------------------------


def test_grafana_datasources_point_at_existing_services_and_ports() -> None:
    sources = datasources()
    prometheus_host, prometheus_port = host_port(sources["prometheus"]["url"], 80)
    assert (prometheus_host, prometheus_port) == ("prometheus", 9090)
    tempo_host, tempo_port = host_port(sources["tempo"]["url"], 80)
    assert tempo_host == "tempo"
    assert tempo_port == tempo()["server"]["http_listen_port"]
    for source in sources.values():
        assert host_port(source["url"], 80)[0] in services()


def test_tempo_datasource_links_traces_to_prometheus_metrics() -> None:
    sources = datasources()
    tempo_source = sources["tempo"]
    assert tempo_source["type"] == "tempo"
    data = tempo_source["jsonData"]
    assert data["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert data["serviceMap"]["datasourceUid"] == "prometheus"
    assert data["tracesToMetrics"]["queries"]
    # Streaming queries need Tempo's stream_over_http_enabled.
    assert tempo()["stream_over_http_enabled"] is True


def test_prometheus_exemplars_link_to_tempo() -> None:
    sources = datasources()
    (destination,) = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["datasourceUid"] == "tempo"
    assert destination["datasourceUid"] in sources


def test_grafana_provisioning_escapes_literal_dollars() -> None:
    # Grafana expands $NAME and ${NAME} in provisioning files; a literal $ must be $$.
    for document in grafana_provisioning("datasources"):
        for text in strings(document):
            assert not re.search(r"(?<!\$)\$(?!\$)", text.replace("$$", "")), text


def test_dashboards_provider_reads_the_mounted_dashboards_folder() -> None:
    (document,) = grafana_provisioning("dashboards")
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mount_target_of("grafana", "grafana/dashboards")


def test_dashboards_are_valid_json_using_provisioned_datasources() -> None:
    files = sorted((DOCKER_DIR / "grafana" / "dashboards").glob("*.json"))
    assert files
    known = set(datasources())
    uids = set()
    for path in files:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["title"], path.name
        assert dashboard["uid"], path.name
        uids.add(dashboard["uid"])
        for panel in dashboard.get("panels", []):
            for holder in [panel, *panel.get("targets", [])]:
                source = holder.get("datasource")
                if isinstance(source, dict) and "uid" in source:
                    assert source["uid"] in known, f"{path.name}: {source}"
    assert len(uids) == len(files), "dashboard uids must be unique"
