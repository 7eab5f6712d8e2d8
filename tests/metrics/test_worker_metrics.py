"""The worker's metrics after real work: an in-process Worker whose ``/metrics`` is served
over loopback, and a real ``ai-orchestrator worker`` subprocess on a throwaway Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from opentelemetry.sdk.trace import TracerProvider

from orchestrator_broker import Broker, MemoryBroker, Message
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_tasks.messages import TaskMessage, converter, messages_of
from orchestrator_telemetry import TracingBroker, process_context
from orchestrator_telemetry.metrics_http import MetricsServer, start_metrics_server
from orchestrator_worker import config as config_module
from orchestrator_worker.config import WorkerSettings
from orchestrator_worker.errors import ConfigError
from orchestrator_worker.metrics import WorkerMetrics
from orchestrator_worker.service import _serve_metrics
from orchestrator_worker.worker import Worker
from tests.e2e.support import Services, clean_env, free_port
from tests.metrics.exposition import Family, names, parse, value
from tests.support.redis_server import RedisServer

OPENMETRICS = {"Accept": "application/openmetrics-text;version=1.0.0"}


@attrs.frozen
class Running:
    broker: Broker
    worker: Worker
    server: MetricsServer


async def submit(broker: Broker, task_id: str, **fields: Any) -> None:
    task = TaskMessage(
        task_id=task_id,
        tenant="acme",
        messages=messages_of("one two three"),
        submitted_at=time.time(),
        **fields,
    )
    await broker.publish("tasks", Message(payload=converter.unstructure(task), id=task_id))


async def scrape(url: str, *, openmetrics: bool = False) -> dict[str, Family]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            url,
            headers=OPENMETRICS if openmetrics else None,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response,
    ):
        assert response.status == 200
        return parse(await response.text(), openmetrics=openmetrics)


async def eventually(url: str, check: Callable[[dict[str, Family]], bool]) -> dict[str, Family]:
    """Scrape until ``check`` holds (hang guard: 30 s)."""
    async with asyncio.timeout(30):
        while True:
            families = await scrape(url)
            try:
                if check(families):
                    return families
            except AssertionError:
                pass
            await asyncio.sleep(0.1)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    broker = TracingBroker(MemoryBroker(), tracer_provider=TracerProvider())
    await broker.ensure_group("results", "api")
    settings = WorkerSettings(
        consumer_name="metrics-worker",
        concurrency=7,
        shutdown_grace=2.0,
        max_attempts=2,
        max_deliveries=3,
        retry_base=0.01,
        retry_max=0.02,
        model_prices={"echo": _price(1.0, 2.0)},
    )
    metrics = WorkerMetrics()
    worker = Worker(broker, settings, delivery_context=process_context, metrics=metrics)
    server = await start_metrics_server(metrics.registry, "127.0.0.1", 0)
    task = asyncio.create_task(worker.run())
    try:
        yield Running(broker, worker, server)
    finally:
        worker.stop(force=True)
        async with asyncio.timeout(15):
            await task
        await server.close()
        await broker.close()


def _price(input_usd: float, output_usd: float) -> Any:
    from orchestrator_worker.pricing import Price

    return Price(input=input_usd, output=output_usd)


async def test_successful_tasks_count_tokens_cost_and_latency(running: Running) -> None:
    for index in range(3):
        await submit(running.broker, f"ok-{index}")

    families = await eventually(
        running.server.url,
        lambda f: value(f, "orchestrator_worker_tasks_succeeded_total") == 3,
    )

    assert value(families, "orchestrator_worker_tasks_started_total", provider="echo") == 3
    assert value(families, "orchestrator_worker_tokens_total", direction="input") >= 9
    assert value(families, "orchestrator_worker_tokens_total", direction="output") >= 9
    assert value(families, "orchestrator_worker_cost_usd_total", provider="echo") > 0
    assert value(families, "orchestrator_worker_provider_duration_seconds_count") == 3
    assert value(families, "orchestrator_task_queue_wait_seconds_count", attempt="first") == 3
    count = "orchestrator_task_priority_queue_wait_seconds_count"
    assert value(families, count, priority="normal") == 3
    assert value(families, "orchestrator_worker_tenant_tasks_running", tenant="acme") == 0
    assert value(families, "orchestrator_task_run_seconds_count", status="succeeded") == 3
    assert value(families, "orchestrator_task_total_seconds_count", status="succeeded") == 3
    assert 0 <= value(families, "orchestrator_task_total_seconds_sum") < 60


async def test_failures_retries_and_dead_letters_are_counted_by_type(running: Running) -> None:
    await submit(running.broker, "bad-request", parameters={"fail": "invalid_request"})
    await submit(running.broker, "rate-limited", parameters={"fail": "rate_limit"})
    await running.broker.publish("tasks", Message(payload=["not", "a", "task"], id="junk"))

    families = await eventually(
        running.server.url,
        lambda f: (
            value(f, "orchestrator_worker_tasks_failed_total", error_type="rate_limit") == 1
            and value(f, "orchestrator_worker_tasks_dead_lettered_total", error_type="invalid_task")
            == 1
        ),
    )

    failed = "orchestrator_worker_tasks_failed_total"
    assert value(families, failed, provider="echo", error_type="invalid_request") == 1
    # rate_limit is retryable: attempt 1 is retried, attempt 2 (MAX_ATTEMPTS) gives up.
    assert value(families, "orchestrator_worker_tasks_retried_total", error_type="rate_limit") == 1
    dead = "orchestrator_worker_tasks_dead_lettered_total"
    assert value(families, dead, error_type="rate_limit") == 1
    assert value(families, "orchestrator_task_queue_wait_seconds_count", attempt="retry") == 1
    assert (
        value(families, "orchestrator_worker_provider_duration_seconds_count", outcome="error") == 3
    )


async def test_capacity_breakers_and_queue_are_read_at_scrape_time(running: Running) -> None:
    await submit(running.broker, "slow", parameters={"latency_ms": 60_000})

    families = await eventually(
        running.server.url, lambda f: value(f, "orchestrator_worker_tasks_in_flight") == 1
    )

    assert value(families, "orchestrator_worker_concurrency_limit") == 7
    assert value(families, "orchestrator_worker_circuit_breaker_state", provider="echo") == 0
    assert value(families, "orchestrator_queue_pending", stream="tasks", group="workers") == 1
    assert value(families, "orchestrator_queue_backlog", stream="tasks", group="workers") == 0
    assert value(families, "orchestrator_broker_up") == 1


async def test_a_provider_pause_is_counted_and_its_seconds_left_shown(
    running: Running,
) -> None:
    # echo's rate_limit failure carries Retry-After: 1 s, which pauses echo in this worker.
    await submit(running.broker, "told-to-wait", parameters={"fail": "rate_limit"})

    pauses = "orchestrator_worker_provider_pauses_total"
    left = "orchestrator_worker_provider_paused_seconds"
    paused = await eventually(
        running.server.url,
        lambda f: value(f, pauses, provider="echo") >= 1 and value(f, left, provider="echo") > 0,
    )
    over = await eventually(running.server.url, lambda f: value(f, left, provider="echo") == 0)

    assert value(paused, pauses, provider="echo", error_type="rate_limit") >= 1
    assert 0 < value(paused, left, provider="echo") <= 1.0
    assert value(over, pauses, provider="echo", error_type="rate_limit") >= 1


async def test_an_unpaused_provider_shows_zero_seconds_paused(running: Running) -> None:
    families = await scrape(running.server.url)

    assert value(families, "orchestrator_worker_provider_paused_seconds", provider="echo") == 0
    assert "orchestrator_worker_provider_pauses_total" not in names(families)


async def test_latency_exemplars_carry_the_tasks_trace_id(running: Running) -> None:
    await submit(running.broker, "traced")
    await eventually(
        running.server.url, lambda f: value(f, "orchestrator_worker_tasks_succeeded_total") == 1
    )

    families = await scrape(running.server.url, openmetrics=True)

    for name in ("orchestrator_worker_provider_duration_seconds", "orchestrator_task_run_seconds"):
        exemplars = [s.exemplar for s in families[name].samples if s.exemplar is not None]
        assert len(exemplars) == 1, name
        assert len(exemplars[0].labels["trace_id"]) == 32


async def test_the_breaker_gauge_follows_state_changes(running: Running) -> None:
    metrics = WorkerMetrics()
    metrics.breaker_changed("openai", "closed", "open")
    metrics.breaker_changed("openai", "open", "half_open")
    server = await start_metrics_server(metrics.registry, "127.0.0.1", 0)
    try:
        families = await scrape(server.url)
    finally:
        await server.close()

    assert value(families, "orchestrator_worker_circuit_breaker_state", provider="openai") == 1
    transitions = "orchestrator_worker_circuit_breaker_transitions_total"
    assert value(families, transitions, provider="openai", state="open") == 1


# ---- a real worker process --------------------------------------------------------------


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    started = Services(tmp_path / "services")
    yield started
    started.stop_all()
    print(started.logs())


@pytest.mark.redis
async def test_a_worker_process_serves_metrics_on_its_metrics_port(
    services: Services, redis_server_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_server_factory()
    port = free_port()
    worker = services.worker(
        clean_env(
            REDIS_URI=redis.url,
            METRICS_PORT=str(port),
            METRICS_HOST="127.0.0.1",
            NUMBER_OF_WORKERS="3",
            MODEL_PRICES="echo=1:1",
        )
    )
    url = f"http://127.0.0.1:{port}/metrics"
    async with asyncio.timeout(60):
        while True:
            assert worker.alive(), worker.tail()
            try:
                await scrape(url)
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)

    broker = RedisStreamsBroker.from_url(redis.url)
    try:
        await broker.ensure_group("results", "api")
        await submit(broker, "from-the-test")
        families = await eventually(
            url,
            lambda f: (
                value(f, "orchestrator_worker_tasks_succeeded_total") == 1
                and value(f, "orchestrator_worker_tasks_in_flight") == 0
            ),  # acked after the event
        )
        openmetrics = await scrape(url, openmetrics=True)
    finally:
        await broker.close()

    assert value(families, "orchestrator_worker_concurrency_limit") == 3
    assert value(families, "orchestrator_worker_cost_usd_total", provider="echo") > 0
    assert value(families, "orchestrator_broker_up") == 1
    # Read at most ~2 s ago: before or after the worker took the task, never more.
    assert value(families, "orchestrator_queue_backlog", stream="tasks", group="workers") <= 1
    assert "orchestrator_task_total_seconds_bucket" in names(openmetrics)


# ---- METRICS_HOST / METRICS_PORT ----------------------------------------------------------


def test_metrics_listen_on_loopback_9100_unless_told_otherwise() -> None:
    assert WorkerSettings.from_env({}).metrics_address == ("127.0.0.1", 9100)
    settings = WorkerSettings.from_env({"METRICS_PORT": "9200", "METRICS_HOST": "0.0.0.0"})
    assert settings.metrics_address == ("0.0.0.0", 9200)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("METRICS_PORT", "http"), ("METRICS_PORT", "70000"), ("METRICS_HOST", "a b")],
)
def test_a_malformed_metrics_setting_is_named(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        WorkerSettings.from_env({variable: raw})


async def test_an_explicit_metrics_port_that_is_taken_stops_the_worker() -> None:
    holder = await start_metrics_server(WorkerMetrics().registry, "127.0.0.1", 0)
    try:
        settings = WorkerSettings(metrics_port=holder.port)
        with pytest.raises(ConfigError, match="METRICS_PORT"):
            await _serve_metrics(WorkerMetrics(), settings)
    finally:
        await holder.close()


async def test_the_default_metrics_port_taken_only_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    holder = await start_metrics_server(WorkerMetrics().registry, "127.0.0.1", 0)
    monkeypatch.setattr(config_module, "DEFAULT_METRICS_PORT", holder.port)
    try:
        server = await _serve_metrics(WorkerMetrics(), WorkerSettings())
    finally:
        await holder.close()

    assert server is None
    assert "no metrics" in caplog.text
