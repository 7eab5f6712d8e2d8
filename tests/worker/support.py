"""Helpers for worker tests: submit tasks, read result events, fake providers."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs

from orchestrator_broker import Broker, Message
from orchestrator_tasks import ResultEvent, TaskMessage, messages_of
from orchestrator_tasks.messages import EventKind, Usage, converter
from orchestrator_worker import Worker, WorkerSettings
from orchestrator_worker.providers import (
    CompletionRequest,
    EchoProvider,
    Finish,
    ProviderRegistry,
    StreamItem,
)

TASKS = "tasks"
RESULTS = "results"
_ids = itertools.count(1)


def settings(**overrides: Any) -> WorkerSettings:
    base = WorkerSettings(consumer_name="worker-1", shutdown_grace=5.0, delta_flush_ms=50.0)
    return attrs.evolve(base, **overrides)


@attrs.define
class RunningWorker:
    worker: Worker
    task: asyncio.Task[None]

    async def stop(self, *, force: bool = False, timeout: float = 15.0) -> None:
        self.worker.stop(force=force)
        async with asyncio.timeout(timeout):
            await self.task


async def start_worker(
    broker: Broker,
    *,
    providers: ProviderRegistry | None = None,
    started_after: float = 1.0,
    hooks: Any = None,
    metrics: Any = None,
    **overrides: Any,
) -> RunningWorker:
    worker = Worker(
        broker,
        settings(**overrides),
        providers=providers,
        started_after=started_after,
        hooks=hooks,
        metrics=metrics,
    )
    # The results group exists before anything is published, as the API's would.
    await broker.ensure_group(RESULTS, "test")
    return RunningWorker(worker, asyncio.create_task(worker.run()))


async def submit(broker: Broker, prompt: str = "hello world", **fields: Any) -> TaskMessage:
    task = TaskMessage(
        task_id=fields.pop("task_id", f"task-{next(_ids)}"),
        tenant=fields.pop("tenant", "tenant-a"),
        messages=messages_of(prompt, fields.pop("system", None)),
        **fields,
    )
    await broker.publish(TASKS, Message(payload=converter.unstructure(task)))
    return task


async def collect(
    broker: Broker,
    terminals: int,
    *,
    events: int | None = None,
    timeout: float = 30.0,
    consumer: str = "reader",
) -> dict[str, list[ResultEvent]]:
    """Result events by task id, in stream order, until ``terminals`` tasks have ended
    (or, with ``events``, until that many events arrived)."""
    found: dict[str, list[ResultEvent]] = defaultdict(list)
    ended = seen = 0
    if terminals == 0 and not events:
        return found
    deliveries = broker.consume(RESULTS, "test", consumer)
    try:
        async with asyncio.timeout(timeout):
            async for delivery in deliveries:
                event = converter.structure(delivery.message.payload, ResultEvent)
                await delivery.ack()
                found[event.task_id].append(event)
                seen += 1
                ended += event.terminal
                if (terminals and ended >= terminals) or (events and seen >= events):
                    break
    finally:
        await deliveries.aclose()
    return found


def kinds(events: Sequence[ResultEvent]) -> list[EventKind]:
    return [event.kind for event in events]


async def wait_for(predicate: Any, *, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` (sync or async) until true; the timeout is only a hang guard."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


async def settled(broker: Broker) -> bool:
    """Whether no task delivery is pending any more."""
    return await broker.pending_count(TASKS, "workers") == 0


@attrs.define
class FakeProvider:
    """A scripted provider: ``chunks`` with ``delay`` between them, optional gate and error.

    Tracks how many streams run at once, so tests can check the concurrency limit.
    """

    name: str = "fake"
    chunks: Sequence[str] = ("a", "b", "c")
    delay: float = 0.0
    gate: asyncio.Event | None = None
    error: BaseException | None = None
    running: int = 0
    most_running: int = 0
    started: int = 0
    closed: bool = False
    requests: list[CompletionRequest] = attrs.field(factory=list)

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        return self._stream(request)

    async def _stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        self.requests.append(request)
        self.started += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            for chunk in self.chunks:
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield chunk
            if self.error is not None:
                raise self.error
            yield Finish(usage=Usage(1, len(self.chunks)), finish_reason="stop")
        finally:
            self.running -= 1

    async def close(self) -> None:
        self.closed = True


def registry(*providers: Any, default_model: str = "echo") -> ProviderRegistry:
    return ProviderRegistry([EchoProvider(), *providers], default_model=default_model)
