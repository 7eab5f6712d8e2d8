"""Fixtures for the broker contract suite: one ``broker`` fixture parametrized over adapters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest
import redis.asyncio

from orchestrator_broker import Broker, MemoryBroker
from orchestrator_broker.redis_streams import RedisStreamsBroker

#: Plants raw stream fields on a stream, as a foreign producer or a corruption would.
RawPublish = Callable[[str, Mapping[str, bytes | str]], Awaitable[None]]


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A fresh broker of each adapter; closed after the test."""
    if request.param == "memory":
        adapter: Broker = MemoryBroker()
    else:
        adapter = RedisStreamsBroker.from_url(request.getfixturevalue("redis_url"))
    try:
        yield adapter
    finally:
        await adapter.close()


@pytest.fixture
async def publish_raw(broker: Broker, request: pytest.FixtureRequest) -> AsyncIterator[RawPublish]:
    """Append raw fields to a stream of ``broker``, bypassing the message encoding."""
    if isinstance(broker, MemoryBroker):
        memory = broker

        async def publish_memory(stream: str, fields: Mapping[str, bytes | str]) -> None:
            await memory.publish_raw(stream, fields)

        yield publish_memory
        return
    client = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))

    async def publish_redis(stream: str, fields: Mapping[str, bytes | str]) -> None:
        await client.xadd(stream, dict(fields))  # type: ignore[arg-type]

    try:
        yield publish_redis
    finally:
        await client.aclose()


@pytest.fixture
def stream() -> str:
    """A stream name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"
