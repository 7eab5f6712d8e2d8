"""Worker fixtures: a memory broker, a worker factory that cleans up, fake providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_broker import Broker, MemoryBroker
from orchestrator_worker.providers import ProviderRegistry
from tests.worker.faults import TimedFakeLLM, llm_registry
from tests.worker.support import RunningWorker, start_worker


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    memory = MemoryBroker()
    yield memory
    await memory.close()


@pytest.fixture
async def worker_factory() -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    """``await worker_factory(broker, concurrency=..., providers=...)``; stopped at teardown."""
    running: list[RunningWorker] = []

    async def start(broker: Broker, **kwargs: Any) -> RunningWorker:
        worker = await start_worker(broker, **kwargs)
        running.append(worker)
        return worker

    yield start
    for worker in running:
        worker.worker.stop(force=True)
    for worker in running:
        async with asyncio.timeout(15):
            await asyncio.wait([worker.task])


@pytest.fixture
async def fake() -> AsyncIterator[TimedFakeLLM]:
    """A fake OpenAI-compatible and Gemini API over loopback (modules may override it)."""
    async with TimedFakeLLM() as server:
        yield server


@pytest.fixture
async def start(
    broker: MemoryBroker,
    worker_factory: Callable[..., Awaitable[RunningWorker]],
    fake: TimedFakeLLM,
) -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    """``await start(read_timeout=..., **settings)``: a worker with echo, openai and gemini
    (on ``fake``); stopped, and its providers closed, at teardown."""
    running: list[tuple[RunningWorker, ProviderRegistry]] = []

    async def start_one(*, read_timeout: float = 2.0, **overrides: Any) -> RunningWorker:
        providers = llm_registry(fake, read_timeout=read_timeout)
        worker = await worker_factory(broker, providers=providers, **overrides)
        running.append((worker, providers))
        return worker

    yield start_one
    for worker, providers in running:
        await worker.stop(force=True)
        await providers.close()


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider whose finished spans land in the exporter, at once."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()
