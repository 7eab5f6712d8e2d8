"""The HTTP API on a real (throwaway) Redis: broker, store and results consumer together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator_api.store.redis import RedisTaskStore
from orchestrator_broker import Message
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_worker.messages import converter
from tests.api.conftest import ACME, GLOBEX, ApiClientFactory
from tests.api.test_http_streaming import lifecycle, messages, read_sse
from tests.api.test_http_tasks import problem_of

pytestmark = pytest.mark.redis


# Requested before api_client in each test, so the app stops before these close.
@pytest.fixture
async def redis_backends(redis_url: str) -> AsyncIterator[tuple[RedisStreamsBroker, Any]]:
    broker = RedisStreamsBroker.from_url(redis_url)
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=60)
    yield broker, store
    await broker.close()
    await store.close()


async def test_sse_over_redis_streams_results_published_by_a_worker(
    redis_backends: tuple[RedisStreamsBroker, Any], api_client: ApiClientFactory
) -> None:
    broker, store = redis_backends
    client = await api_client(broker=broker, store=store)
    response = await client.post("/v1/tasks", json={"prompt": "hi"}, headers=ACME)
    assert response.status == 202
    task_id = (await response.json())["id"]
    stream = await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)
    assert stream.status == 200

    async def worker() -> None:
        for event in lifecycle(task_id):
            await asyncio.sleep(0.02)
            await broker.publish("results", Message(converter.unstructure(event)))

    publishing = asyncio.create_task(worker())
    events = messages(await read_sse(stream))
    await publishing
    assert [e["event"] for e in events] == ["status", "status", "delta", "delta", "result"]

    resumed = messages(
        await read_sse(
            await client.get(
                f"/v1/tasks/{task_id}/events", headers={**ACME, "Last-Event-ID": events[1]["id"]}
            )
        )
    )
    assert resumed == events[2:]

    task = await (await client.get(f"/v1/tasks/{task_id}", headers=ACME)).json()
    assert task["status"] == "succeeded"
    assert task["result"]["text"] == "Hello"
    await problem_of(await client.get(f"/v1/tasks/{task_id}", headers=GLOBEX), 404)


async def test_idempotency_over_redis(
    redis_backends: tuple[RedisStreamsBroker, Any], api_client: ApiClientFactory
) -> None:
    broker, store = redis_backends
    client = await api_client(broker=broker, store=store)
    headers = {**ACME, "Idempotency-Key": "once"}
    first = await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    second = await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    assert (first.status, second.status) == (202, 200)
    assert (await first.json())["id"] == (await second.json())["id"]
