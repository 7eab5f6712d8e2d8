"""Fixtures for the broker contract suite: one ``broker`` fixture parametrized over adapters."""

from __future__ import annotations

import importlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, cast

import pytest
import redis.asyncio

from orchestrator_broker import Broker, MemoryBroker

#: Plants raw stream fields on a stream, as a foreign producer or a corruption would.
RawPublish = Callable[[str, Mapping[str, bytes | str]], Awaitable[None]]


def _redis_broker_class() -> Any:
    try:
        module = importlib.import_module("orchestrator_broker.redis_streams")
    except ImportError as exc:
        pytest.skip(f"orchestrator_broker.redis_streams is not importable yet: {exc}")
    return module.RedisStreamsBroker


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
        broker_class = _redis_broker_class()
        redis_url = request.getfixturevalue("redis_url")
        made = broker_class.from_url(redis_url)
        adapter = cast(Broker, await made if inspect.isawaitable(made) else made)
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
