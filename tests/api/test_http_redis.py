"""The HTTP API on a real (throwaway) Redis: broker, store and results consumer together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator_api.store.redis import RedisTaskStore
from orchestrator_broker import BrokerUnavailable, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_tasks.messages import converter
from tests.api.conftest import ACME, GLOBEX, ApiClientFactory
from tests.api.test_http_streaming import lifecycle, messages, read_sse
from tests.api.test_http_tasks import problem_of, published
from tests.support.redis_server import RedisServer

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


class RedisKillingBroker(MemoryBroker):
    """Publishing kills the store's Redis once: it dies between a task's create and its
    publish, so the publish fails and so does the discard."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server: RedisServer | None = server

    async def publish(self, stream: str, message: Message, **options: Any) -> str:
        if self.server is not None:
            self.server.kill()
            self.server = None
            raise BrokerUnavailable("connection reset")
        return await super().publish(stream, message, **options)


async def test_a_task_orphaned_by_a_redis_crash_mid_submit_blocks_nothing_for_long(
    redis_server_factory: Callable[..., RedisServer], api_client: ApiClientFactory
) -> None:
    server = redis_server_factory(appendonly=True)  # the orphaned record survives the crash
    store = RedisTaskStore.from_url(server.url, ttl_seconds=60, pending_seconds=3.0)
    broker = RedisKillingBroker(server)
    try:
        client = await api_client(broker=broker, store=store)
        body = {"prompt": "the same prompt"}
        keyed = {**ACME, "Idempotency-Key": "crash"}
        await problem_of(await client.post("/v1/tasks", json=body, headers=keyed), 503)
        server.start()
        async with aioredis.Redis.from_url(server.url) as raw:
            assert len([k async for k in raw.scan_iter("orchestrator:task:*")]) == 1

        # While its request might still be finishing, the key is in use...
        await problem_of(await client.post("/v1/tasks", json=body, headers=keyed), 409)
        await asyncio.sleep(3.2)
        # ...then the key, and the lead of the prompt's cache key, go to a new task.
        retried = await client.post("/v1/tasks", json=body, headers=keyed)
        assert retried.status == 202
        leader = await retried.json()
        identical = await client.post("/v1/tasks", json=body, headers=ACME)
        assert (await identical.json())["joined"] is True
        assert [m.task_id for m in await published(broker)] == [leader["id"]]
        shown = await (await client.get(f"/v1/tasks/{leader['id']}", headers=ACME)).json()
        assert shown["status"] == "queued"
    finally:
        await store.close()
