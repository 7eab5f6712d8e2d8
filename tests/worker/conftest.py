"""Worker fixtures: a memory broker, a worker factory that cleans up, fake providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from orchestrator_broker import Broker, MemoryBroker
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
