"""Fixtures for the broker contract suite: one ``broker`` fixture parametrized over adapters."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import redis.asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_broker import Broker, MemoryBroker
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_telemetry import TracingBroker

#: Plants raw stream fields on a stream, as a foreign producer or a corruption would.
RawPublish = Callable[[str, Mapping[str, bytes | str]], Awaitable[None]]


#: Every adapter, and each wrapped in ``TracingBroker`` (what the services run), recording.
ADAPTERS = [
    pytest.param("memory"),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("traced-memory"),
    pytest.param("traced-redis", marks=pytest.mark.redis),
]


def traced(adapter: Broker) -> tuple[TracingBroker, TracerProvider]:
    """``adapter`` wrapped in a ``TracingBroker`` whose spans record (kept in memory)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return TracingBroker(adapter, tracer_provider=provider), provider


@contextlib.asynccontextmanager
async def open_adapter(
    request: pytest.FixtureRequest, name: str, **options: Any
) -> AsyncIterator[Broker]:
    """A fresh broker of adapter ``name`` (``options`` for the adapter); closed after."""
    base = name.removeprefix("traced-")
    adapter: Broker
    if base == "memory":
        adapter = MemoryBroker(**options)
    else:
        adapter = RedisStreamsBroker.from_url(request.getfixturevalue("redis_url"), **options)
    provider: TracerProvider | None = None
    if name.startswith("traced-"):
        adapter, provider = traced(adapter)
    try:
        yield adapter
    finally:
        await adapter.close()
        if provider is not None:
            provider.shutdown()


@pytest.fixture(params=ADAPTERS)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A fresh broker of each adapter; closed after the test."""
    async with open_adapter(request, request.param) as adapter:
        yield adapter


def inner(broker: Broker) -> Broker:
    """The adapter under any ``TracingBroker``."""
    return broker.inner if isinstance(broker, TracingBroker) else broker


@pytest.fixture
async def publish_raw(broker: Broker, request: pytest.FixtureRequest) -> AsyncIterator[RawPublish]:
    """Append raw fields to a stream of ``broker``, bypassing the message encoding."""
    if isinstance(inner(broker), MemoryBroker):
        memory = inner(broker)
        assert isinstance(memory, MemoryBroker)

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
