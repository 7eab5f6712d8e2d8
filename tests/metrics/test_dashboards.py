"""The provisioned Grafana dashboards query only metrics (and labels) that exist, through
provisioned datasources, and every latency panel leads to traces."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deployment.support import DOCKER_DIR, load_yaml
from tests.metrics.exposition import Family
from tests.metrics.populated import exposed, populated_registry

DASHBOARDS = DOCKER_DIR / "grafana" / "dashboards"
#: Series that come from elsewhere: Prometheus itself and Tempo's metrics-generator.
EXTERNAL = re.compile(r"^(up|traces_spanmetrics_\w+|traces_service_graph_\w+)$")
#: Labels every scraped series has, or that histogram buckets have.
TARGET_LABELS = frozenset({"job", "instance", "le"})
#: Tempo span-metrics labels.
SPANMETRICS_LABELS = frozenset({"service", "span_name", "span_kind", "status_code"})
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip


@functools.cache
def families() -> dict[str, Family]:
    """Every metric the services define, as their exposition shows it (each with a series)."""
    return exposed(populated_registry())


def labels_by_series() -> dict[str, frozenset[str]]:
    """Series name -> the labels it carries (``le`` aside), read from the exposition."""
    found: dict[str, set[str]] = {}
    for family in families().values():
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(set(sample.labels) - {"le"})
    return {name: frozenset(labels) for name, labels in found.items()}


def test_every_family_the_services_define_has_a_series_here() -> None:
    """The registry these tests read holds every metric (none left without samples)."""
    empty = {name for name, family in families().items() if not family.samples}
    assert not empty
    assert len(families()) >= 30


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(DASHBOARDS.glob("*.json"))
    ]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every Prometheus query, panels and template variables."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel["title"], target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if isinstance(text, str) and text:
            yield f"variable {variable['name']}", text


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r"\1", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def selector_labels(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, label) for each label matcher written right after a metric name."""
    for match in re.finditer(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", match.group(2)):
            yield match.group(1), label


def grouping_labels(expr: str) -> set[str]:
    found: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        found.update(label.strip() for label in group.split(",") if label.strip())
    return found


def provisioned_datasource_uids() -> set[str]:
    folder = DOCKER_DIR / "grafana" / "provisioning" / "datasources"
    return {
        source["uid"] for path in folder.glob("*.y*ml") for source in load_yaml(path)["datasources"]
    }


def test_the_expression_reader_finds_metric_names_only() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(x_seconds_bucket{route!~".*/ws",'
        'a="b c"}[$__rate_interval]))) / clamp_min(sum(rate(y_total[5m])), 1e-9) or vector(0)'
    )
    assert metric_names(expr) == {"x_seconds_bucket", "y_total"}
    assert metric_names("label_values(z_total, tenant)") == {"z_total"}
    assert set(selector_labels(expr)) == {("x_seconds_bucket", "route"), ("x_seconds_bucket", "a")}
    assert grouping_labels(expr) == {"le", "route"}


def test_there_are_three_dashboards_with_stable_unique_uids() -> None:
    uids = {board["uid"] for _, board in dashboards()}
    assert uids == {"ai-orchestrator-health", "ai-orchestrator-queue", "ai-orchestrator-ai-usage"}


@pytest.mark.parametrize(("name", "board"), dashboards(), ids=[n for n, _ in dashboards()])
def test_dashboards_query_only_metrics_the_services_define(
    name: str, board: dict[str, Any]
) -> None:
    known = labels_by_series()
    queried: set[str] = set()
    for title, expr in exprs(board):
        for metric in metric_names(expr):
            queried.add(metric)
            assert metric in known or EXTERNAL.match(metric), f"{name}: {title}: {metric}"
    assert queried, name


@pytest.mark.parametrize(("name", "board"), dashboards(), ids=[n for n, _ in dashboards()])
def test_dashboards_filter_and_group_by_labels_the_metrics_have(
    name: str, board: dict[str, Any]
) -> None:
    known = labels_by_series()
    for title, expr in exprs(board):
        metrics = [m for m in metric_names(expr) if m in known]
        available = set(TARGET_LABELS)
        for metric in metrics:
            available |= known[metric]
        if any(EXTERNAL.match(m) for m in metric_names(expr)):
            available |= SPANMETRICS_LABELS
        for metric, label in selector_labels(expr):
            if metric in known:
                assert label in known[metric] | TARGET_LABELS, f"{name}: {title}: {metric}.{label}"
        for label in grouping_labels(expr):
            assert label in available, f"{name}: {title}: by ({label})"


def test_every_defined_metric_is_on_some_dashboard() -> None:
    shown: set[str] = set()
    for _, board in dashboards():
        for _, expr in exprs(board):
            shown |= metric_names(expr)
    families_shown = {
        name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name in shown
    }
    unused = {name for name in families() if name not in shown and name not in families_shown}
    # The overflow counter is for people reading /metrics, and the transitions counter
    # duplicates the state timeline.
    assert unused <= {
        "orchestrator_metrics_series_overflow_total",
        "orchestrator_worker_circuit_breaker_transitions_total",
    }


@pytest.mark.parametrize(("name", "board"), dashboards(), ids=[n for n, _ in dashboards()])
def test_dashboards_use_provisioned_datasources(name: str, board: dict[str, Any]) -> None:
    known = provisioned_datasource_uids()
    holders: list[dict[str, Any]] = []
    for panel in panels(board):
        holders.append(panel)
        holders.extend(panel.get("targets", []))
    holders.extend(board.get("templating", {}).get("list", []))
    for holder in holders:
        source = holder.get("datasource")
        if isinstance(source, dict) and "uid" in source:
            assert source["uid"] in known, f"{name}: {source}"
    for panel in panels(board):
        for link in panel.get("links", []):
            if "/explore" in link["url"]:
                assert "tempo" in known
                assert "%22tempo%22" in link["url"], link["url"]


@pytest.mark.parametrize(("name", "board"), dashboards(), ids=[n for n, _ in dashboards()])
def test_latency_panels_show_exemplars_and_link_to_tempo(name: str, board: dict[str, Any]) -> None:
    latency_panels = [
        panel
        for panel in panels(board)
        if any("histogram_quantile" in t.get("expr", "") for t in panel.get("targets", []))
    ]
    assert latency_panels, name
    for panel in latency_panels:
        for target in panel["targets"]:
            assert target.get("exemplar") is True, f"{name}: {panel['title']}"
        is_tempo_metric = "traces_spanmetrics" in json.dumps(panel["targets"])
        assert is_tempo_metric or panel.get("links"), f"{name}: {panel['title']} has no link"


@pytest.mark.parametrize(("name", "board"), dashboards(), ids=[n for n, _ in dashboards()])
def test_panels_have_unique_ids_and_fit_the_grid(name: str, board: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), name
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, f"{name}: {panel['title']}"
        assert grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']}"


def test_the_dashboards_folder_holds_only_dashboards() -> None:
    assert all(path.suffix == ".json" for path in DASHBOARDS.iterdir())
