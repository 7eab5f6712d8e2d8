"""The compose file: valid against the compose specification, and everything it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from orchestrator_api.config import ApiSettings
from orchestrator_worker.config import WorkerSettings
from tests.deployment.support import (
    COMPOSE_FILE,
    DOCKER_DIR,
    ROOT,
    MissingVariable,
    compose,
    env_file_values,
    existing_env_file,
    interpolate_tree,
)

ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}
EXPECTED_SERVICES = {"redis", "api", "worker", "otel-collector", "tempo", "prometheus", "grafana"}


def services() -> dict[str, Any]:
    data: dict[str, Any] = interpolate_tree(compose(), ENV)["services"]
    return data


def test_compose_file_matches_the_compose_specification() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is a dev dependency")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_the_whole_stack() -> None:
    assert set(services()) == EXPECTED_SERVICES


def test_every_pulled_image_tag_is_pinned() -> None:
    for name, service in services().items():
        if "build" in service:
            continue  # our own image, built from this checkout
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_depends_on_names_existing_services_and_redis_must_be_healthy() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
    for name in ("api", "worker"):
        assert all_services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_env_files_exist_or_have_a_committed_example() -> None:
    for name in ("api", "worker"):
        reference = services()[name]["env_file"]
        assert existing_env_file(DOCKER_DIR, reference).is_file(), reference
    assert services()["api"]["env_file"] == "../../.api_env"
    assert services()["worker"]["env_file"] == "../../.worker_env"


def test_mounted_config_files_and_named_volumes_exist() -> None:
    data = interpolate_tree(compose(), ENV)
    declared = set(data.get("volumes", {}))
    for name, service in data["services"].items():
        for entry in service.get("volumes", []):
            source = entry.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_build_context_is_the_repository_root_and_the_dockerfile_exists() -> None:
    for name in ("api", "worker"):
        build = services()[name]["build"]
        context = (DOCKER_DIR / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
    assert services()["api"]["image"] == services()["worker"]["image"]


def test_services_run_the_image_by_command() -> None:
    assert services()["api"]["command"] == ["api"]
    assert services()["worker"]["command"] == ["worker"]


def test_redis_is_durable_never_evicts_and_is_not_published() -> None:
    redis = services()["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert "ports" not in redis
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert any(entry.endswith(":/data") for entry in redis["volumes"])


def test_redis_fsync_policy_can_be_chosen_from_the_environment() -> None:
    data = interpolate_tree(compose(), {**ENV, "REDIS_APPENDFSYNC": "always"})
    command = data["services"]["redis"]["command"]
    assert command[command.index("--appendfsync") + 1] == "always"


def test_worker_is_scalable() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_api_is_published_on_port_or_8080_and_listens_on_8080_inside() -> None:
    api = services()["api"]
    assert api["ports"] == ["8080:8080"]
    assert api["environment"]["PORT"] == "8080"
    custom = interpolate_tree(compose(), {**ENV, "PORT": "9000"})["services"]["api"]
    assert custom["ports"] == ["9000:8080"]


def test_grafana_admin_password_is_required_and_has_no_default() -> None:
    raw = compose()["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert raw == "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"
    with pytest.raises(MissingVariable):
        interpolate_tree(compose(), {})


def test_no_password_or_secret_is_committed_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8").lower()
    assert "secret" not in re.sub(r"#.*", "", text)
    assert "admin/admin" not in text


def test_api_env_example_is_a_valid_api_configuration() -> None:
    values = env_file_values(ROOT / ".api_env.example")
    settings = ApiSettings.from_env(values)
    assert settings.port == 8080
    assert values["REDIS_URI"] == "redis:6379"
    assert values["JAEGER_URI"] == "otel-collector:4318"
    assert settings.api_keys, "the example must ship a (placeholder) API key"
    assert all("CHANGE" in key.upper() for _, key in settings.api_keys)


def test_worker_env_example_is_a_valid_worker_configuration() -> None:
    values = env_file_values(ROOT / ".worker_env.example")
    settings = WorkerSettings.from_env(values)
    assert settings.redis_uri == "redis:6379"
    assert settings.jaeger_uri == "otel-collector:4318"
    assert settings.concurrency == 5


def test_env_examples_agree_on_the_streams() -> None:
    api = env_file_values(ROOT / ".api_env.example")
    worker = env_file_values(ROOT / ".worker_env.example")
    for name in ("REDIS_URI", "REDIS_STREAM_ID", "REDIS_RESULTS_STREAM_ID", "JAEGER_URI"):
        assert api[name] == worker[name], name


def test_env_examples_point_at_compose_services() -> None:
    names = set(services())
    for example in (".api_env.example", ".worker_env.example"):
        values = env_file_values(ROOT / example)
        for variable in ("REDIS_URI", "JAEGER_URI"):
            host = values[variable].split(":")[0]
            assert host in names, f"{example}: {variable} host {host} is not a compose service"


def test_real_env_files_are_git_ignored() -> None:
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".api_env" in ignored
    assert ".worker_env" in ignored


def test_env_example_values_need_no_quotes() -> None:
    # compose's env_file and our --env-file parser must read the same values: keep them plain.
    for example in (".api_env.example", ".worker_env.example"):
        for line in (ROOT / example).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                value = line.partition("=")[2]
                assert not value.startswith(("'", '"')), line
                assert " #" not in value, line
