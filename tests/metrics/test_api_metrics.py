"""The API's ``GET /metrics`` after real traffic: a real app over loopback HTTP on the
in-memory broker and store, with a real Worker answering the tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE

from orchestrator_api.app import create_app
from orchestrator_api.config import ApiSettings
from orchestrator_api.ratelimit import Rate
from orchestrator_api.store.memory import MemoryTaskStore
from orchestrator_broker import MemoryBroker
from orchestrator_telemetry import TracingBroker, process_context
from orchestrator_worker.config import WorkerSettings
from orchestrator_worker.worker import Worker
from tests.metrics.exposition import Family, names, parse, samples, value

ACME = {"Authorization": "Bearer key-acme"}
GLOBEX = {"Authorization": "Bearer key-globex"}
OPENMETRICS = {"Accept": "application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"}


@attrs.frozen
class Stack:
    client: TestClient[Any, Any]
    broker: TracingBroker
    worker: Worker


@pytest.fixture
async def stack(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> AsyncIterator[Stack]:
    settings = ApiSettings(
        api_keys=(("acme", "key-acme"), ("globex", "key-globex")), host="127.0.0.1", port=0
    )
    # Traced as in production: the worker's events and the API's applies join each task's
    # trace, so latency exemplars carry trace ids.
    provider = TracerProvider()
    broker = TracingBroker(MemoryBroker(), tracer_provider=provider)
    store = MemoryTaskStore(settings.cache_ttl_seconds)
    app = create_app(settings, broker=broker, store=store, tracer_provider=provider)

    async def close(_: web.Application) -> None:
        await store.close()

    app.on_cleanup.append(close)
    client = await aiohttp_client(app)
    worker = Worker(
        broker,
        WorkerSettings(consumer_name="metrics-worker", concurrency=8, shutdown_grace=2.0),
        delivery_context=process_context,
    )
    running = asyncio.create_task(worker.run())
    try:
        yield Stack(client, broker, worker)
    finally:
        worker.stop(force=True)
        async with asyncio.timeout(15):
            await running
        await client.close()
        await broker.close()


async def scrape(client: TestClient[Any, Any], *, openmetrics: bool = False) -> dict[str, Family]:
    response = await client.get("/metrics", headers=OPENMETRICS if openmetrics else None)
    assert response.status == 200
    content_type = response.headers["Content-Type"]
    if openmetrics:
        assert content_type.startswith(OPENMETRICS_TYPE)
    else:
        assert content_type == CONTENT_TYPE_PLAIN_0_0_4
    return parse(await response.text(), openmetrics=openmetrics)


async def run_task(client: TestClient[Any, Any], headers: dict[str, str], **body: Any) -> Any:
    response = await client.post(
        # cache off: each call runs (identical prompts would otherwise be served from cache)
        "/v1/tasks",
        json={"prompt": "one two three", "cache": False, **body},
        headers=headers,
    )
    assert response.status == 202, await response.text()
    task = await response.json()
    async with asyncio.timeout(20):
        while True:
            polled = await client.get(f"/v1/tasks/{task['id']}", headers=headers)
            record = await polled.json()
            if record["status"] in ("succeeded", "failed"):
                return record
            await asyncio.sleep(0.02)


async def test_metrics_needs_no_api_key_and_answers_both_formats(stack: Stack) -> None:
    plain = await scrape(stack.client)
    openmetrics = await scrape(stack.client, openmetrics=True)

    assert "orchestrator_broker_up" in names(plain)
    assert "orchestrator_broker_up" in names(openmetrics)


async def test_requests_are_counted_by_route_template_and_status(stack: Stack) -> None:
    record = await run_task(stack.client, ACME)
    await stack.client.get("/v1/tasks/does-not-exist", headers=ACME)
    await stack.client.get(f"/v1/tasks/{record['id']}")  # no key: 401
    await stack.client.get("/no/such/path")

    families = await scrape(stack.client)
    count = "orchestrator_api_http_request_duration_seconds_count"

    assert value(families, count, method="POST", route="/v1/tasks", status="202") == 1
    assert value(families, count, method="GET", route="/v1/tasks/{task_id}", status="404") == 1
    assert value(families, count, method="GET", route="/v1/tasks/{task_id}", status="401") == 1
    assert value(families, count, route="unmatched", status="404") == 1
    routes = {
        s.labels["route"]
        for s in families["orchestrator_api_http_request_duration_seconds"].samples
    }
    assert not any(record["id"] in route for route in routes), "a task id became a label"


async def test_tasks_tokens_and_status_are_counted_per_tenant(stack: Stack) -> None:
    await run_task(stack.client, ACME)
    await run_task(stack.client, ACME, model="echo")
    await run_task(stack.client, GLOBEX, parameters={"fail": "rate_limit"})

    families = await scrape(stack.client)

    accepted = "orchestrator_api_tasks_accepted_total"
    assert value(families, accepted, tenant="acme", model="default") == 1
    assert value(families, accepted, tenant="acme", model="echo") == 1
    assert value(families, accepted, tenant="globex") == 1
    finished = "orchestrator_api_tasks_finished_total"
    assert value(families, finished, tenant="acme", status="succeeded", provider="echo") == 2
    assert value(families, finished, tenant="globex", status="failed") == 1
    tokens = "orchestrator_api_tokens_total"
    assert value(families, tokens, tenant="acme", direction="input") >= 6  # 3 words, twice
    assert value(families, tokens, tenant="acme", direction="output") >= 6
    assert value(families, "orchestrator_api_result_events_total", outcome="applied") >= 3


async def test_an_idempotent_replay_is_not_counted_as_accepted(stack: Stack) -> None:
    headers = {**ACME, "Idempotency-Key": "same"}
    first = await stack.client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    again = await stack.client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    assert (first.status, again.status) == (202, 200)

    families = await scrape(stack.client)

    assert value(families, "orchestrator_api_tasks_accepted_total", tenant="acme") == 1


async def test_submissions_over_a_tenants_rate_are_counted_as_rate_limited_per_tenant(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    settings = ApiSettings(
        api_keys=(("acme", "key-acme"), ("globex", "key-globex")),
        rate_limits={"acme": Rate(2, 3600.0)},  # a burst of 2, then none for the test
    )
    broker = MemoryBroker()
    store = MemoryTaskStore(settings.cache_ttl_seconds)
    client = await aiohttp_client(create_app(settings, broker=broker, store=store))
    try:
        statuses = []
        for headers in (ACME, ACME, ACME, ACME, GLOBEX, GLOBEX):
            response = await client.post(
                "/v1/tasks", json={"prompt": "x", "cache": False}, headers=headers
            )
            statuses.append(response.status)
        families = await scrape(client)
    finally:
        await client.close()
        await store.close()
        await broker.close()

    assert statuses == [202, 202, 429, 429, 202, 202]
    limited = "orchestrator_api_tasks_rate_limited_total"
    assert value(families, limited, tenant="acme") == 2
    assert {s.labels["tenant"] for s in families[limited].samples} == {"acme"}
    assert value(families, "orchestrator_api_tasks_accepted_total", tenant="acme") == 2
    count = "orchestrator_api_http_request_duration_seconds_count"
    assert value(families, count, method="POST", route="/v1/tasks", status="429") == 2


async def test_result_delay_is_observed_with_trace_exemplars(stack: Stack) -> None:
    for _ in range(3):
        await run_task(stack.client, ACME)

    families = await scrape(stack.client, openmetrics=True)
    delay = families["orchestrator_api_result_delay_seconds"]

    assert value(families, "orchestrator_api_result_delay_seconds_count", kind="succeeded") >= 3
    exemplars = [s.exemplar for s in delay.samples if s.exemplar is not None]
    assert exemplars
    assert all(len(e.labels["trace_id"]) == 32 for e in exemplars)
    latency = families["orchestrator_api_http_request_duration_seconds"]
    assert any(s.exemplar is not None for s in latency.samples)


async def test_queue_gauges_show_the_backlog_and_pending_of_both_streams(stack: Stack) -> None:
    await run_task(stack.client, ACME)

    families = await scrape(stack.client)

    assert value(families, "orchestrator_broker_up") == 1
    assert value(families, "orchestrator_queue_backlog", stream="tasks", group="workers") == 0
    assert value(families, "orchestrator_queue_pending", stream="results", group="api") >= 0
    assert value(families, "orchestrator_queue_dead_letters", stream="tasks") == 0


async def test_a_growing_backlog_shows_when_no_worker_takes_tasks(stack: Stack) -> None:
    stack.worker.stop(force=True)
    await asyncio.sleep(0.1)
    for _ in range(3):
        response = await stack.client.post(
            "/v1/tasks", json={"prompt": "x", "cache": False}, headers=ACME
        )
        assert response.status == 202
    families = await scrape(stack.client)

    assert value(families, "orchestrator_queue_backlog", stream="tasks", group="workers") >= 3


async def test_a_broker_that_is_down_reads_as_down_without_stale_depths(stack: Stack) -> None:
    await stack.broker.close()

    families = await scrape(stack.client)

    assert value(families, "orchestrator_broker_up") == 0
    assert "orchestrator_queue_backlog" not in names(families)


_METHODS = (
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH",
    "PURGE", "LINK", "UNLINK", "ACL", "MERGE", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH",
)  # fmt: skip


async def test_made_up_model_names_and_methods_cannot_grow_metrics_past_the_cap(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    settings = ApiSettings(api_keys=(("acme", "key-acme"),), metrics_max_label_values=10)
    broker = MemoryBroker()
    store = MemoryTaskStore(settings.cache_ttl_seconds)
    client = await aiohttp_client(create_app(settings, broker=broker, store=store))
    try:

        async def flood(start: int, stop: int) -> int:
            for index in range(start, stop):
                response = await client.post(
                    "/v1/tasks", json={"prompt": "x", "model": f"made-up-{index}"}, headers=ACME
                )
                assert response.status == 202, await response.text()
                # Methods the HTTP parser knows (it refuses made-up ones before any handler)
                await client.request(_METHODS[index % len(_METHODS)], "/no-such-route")
            response = await client.get("/metrics")
            return len(await response.read())

        await client.get("/metrics")  # so GET /metrics has its own series from the start
        after_30 = await flood(0, 30)
        after_300 = await flood(30, 300)
        families = await scrape(client)
    finally:
        await client.close()
        await store.close()
        await broker.close()

    accepted = "orchestrator_api_tasks_accepted_total"
    models = {s.labels["model"] for s in families[accepted].samples}
    assert len(models) == 11  # ten kept, the rest as one "other"
    assert value(families, accepted, tenant="acme", model="other") == 290
    count = "orchestrator_api_http_request_duration_seconds_count"
    methods = {s.labels["method"] for s in samples(families) if s.name == count}
    assert methods == {"GET", "POST", "PATCH", "_OTHER"}  # unknown methods are one value
    # 270 more made-up names: no new series (only counts got a digit longer), where each
    # new model used to add two series and ~400 bytes
    assert after_300 - after_30 < 100
