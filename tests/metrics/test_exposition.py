"""``GET /metrics`` over loopback: the format follows the scraper's ``Accept`` header, the
registry's refreshes run first, and the services' whole exposition passes promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE

from orchestrator_telemetry.metrics import add_refresh, histogram
from orchestrator_telemetry.metrics_http import MetricsServer, start_metrics_server
from tests.metrics.exposition import parse, value
from tests.metrics.populated import populated_registry

PLAIN_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: What Prometheus 2.x sends (OpenMetrics preferred).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.fixture
async def server() -> AsyncIterator[tuple[MetricsServer, list[str]]]:
    registry = CollectorRegistry()
    child = histogram(registry, "h_seconds", "H.", ("x",), buckets=(1.0,)).labels("1")
    child.observe(0.5, 0x0123456789ABCDEF0123456789ABCDEF)
    refreshed: list[str] = []

    async def read() -> None:
        refreshed.append("read")

    add_refresh(registry, read)
    started = await start_metrics_server(registry, "127.0.0.1", 0)
    try:
        yield started, refreshed
    finally:
        await started.close()


async def get(url: str, accept: str | None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept is not None else {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as response,
    ):
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


@pytest.mark.parametrize("accept", [None, "text/plain;version=0.0.4", "*/*"])
async def test_the_classic_text_format_is_served_unless_openmetrics_is_asked_for(
    server: tuple[MetricsServer, list[str]], accept: str | None
) -> None:
    content_type, body = await get(server[0].url, accept)

    assert content_type == PLAIN_TYPE
    families = parse(body)
    assert value(families, "h_seconds_count") == 1
    assert " # " not in body  # no exemplars in this format


@pytest.mark.parametrize(
    "accept", [PROMETHEUS_ACCEPT, "application/openmetrics-text", "application/openmetrics-text;"]
)
async def test_openmetrics_with_exemplars_is_served_when_the_scraper_asks(
    server: tuple[MetricsServer, list[str]], accept: str
) -> None:
    content_type, body = await get(server[0].url, accept)

    assert content_type.startswith(OPENMETRICS_TYPE)
    families = parse(body, openmetrics=True)
    exemplars = [s.exemplar for s in families["h_seconds"].samples if s.exemplar is not None]
    assert [e.labels for e in exemplars] == [{"trace_id": "0123456789abcdef0123456789abcdef"}]


async def test_each_scrape_runs_the_registrys_refreshes_first(
    server: tuple[MetricsServer, list[str]],
) -> None:
    await get(server[0].url, None)
    await get(server[0].url, PROMETHEUS_ACCEPT)

    assert server[1] == ["read", "read"]


def test_the_services_metrics_pass_promtools_lint() -> None:
    """Naming conventions (units, _total, help texts) as Prometheus' own linter sees them,
    on every family of both services, each with a series."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):  # CI runs tests/run.sh, which provides it: never skip there
            pytest.fail("promtool is missing (tests/run.sh extracts it from Debian's prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")

    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(populated_registry()),
        capture_output=True,
        timeout=60,
    )

    assert result.returncode == 0, (result.stdout + result.stderr).decode()
