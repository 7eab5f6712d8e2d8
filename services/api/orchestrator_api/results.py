"""The results consumer: applies the workers' result events to the task store.

Each API process runs one ``ResultsConsumer`` in the ``api`` consumer group of the results
stream, so the replicas share the work and each entry is applied by one of them (at least
once: ``TaskStore.apply`` makes redeliveries harmless).

Throughput comes from concurrency, order from lanes: deliveries are applied concurrently
(the Redis store coalesces the applies of one event-loop turn into one pipeline), and those
of one task go through that task's lane. A lane applies an attempt's non-terminal events
(``started``, deltas) as they come, without waiting for the one before: the store puts an
event that overtook its predecessor aside until the gap is filled (``_steps.Cursor``), so
the log comes out in order either way, and a worker's ``started`` + first delta, read one
after the other, cost one round trip instead of two before the first text can be read. A
terminal event, or one of another attempt, waits until every earlier event of the lane is
applied, and nothing starts beside it: the store would drop a delta that a terminal event
overtook, and a stale attempt's event that a newer one overtook. Across replicas, or after
a redelivery, the store's own ordering rules take over.

Nothing is lost when the store is down: a delivery is acked only after its event is applied.
While the store is unreachable its lane retries with backoff, holding the delivery (the
broker keeps extending its lease) instead of nacking it, which would burn delivery counts
until the broker dead-letters it; the in-flight limit then stops the intake, so the backlog
waits on the stream. A payload that is not a ``ResultEvent`` is dead-lettered with the
reason; an unexpected store error nacks with a delay (the broker dead-letters an entry after
``max_deliveries``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import attrs
from opentelemetry import trace

from orchestrator_broker import Broker, BrokerError, ConsumeOptions, Delivery, default_consumer_name
from orchestrator_tasks import InvalidResultEvent, ResultEvent, decode_event
from orchestrator_telemetry import process_context

from .store import StoreUnavailable, TaskStore

__all__ = ["ConsumerStats", "ResultsConsumer"]

log = logging.getLogger(__name__)


class _Lane:
    """One task's deliveries: those waiting, and those being applied (``running``, all of
    one ``attempt``; ``barrier``: the one running is terminal, and nothing joins it)."""

    __slots__ = ("attempt", "barrier", "queue", "running")

    def __init__(self) -> None:
        self.queue: deque[tuple[Delivery, ResultEvent]] = deque()
        self.running = 0
        self.attempt = 0
        self.barrier = False

    def admits(self, event: ResultEvent) -> bool:
        """Whether ``event`` may be applied now, beside the running ones."""
        if not self.running:
            return True
        return not self.barrier and not event.terminal and event.attempt == self.attempt


@attrs.define
class ConsumerStats:
    """Counters since start (for logs, metrics and tests)."""

    applied: int = 0  # applied or buffered by the store
    ignored: int = 0  # duplicates, stale attempts, after the terminal, unknown tasks
    dead_lettered: int = 0
    store_retries: int = 0
    nacked: int = 0


class ResultsConsumer:
    """Consumes ``stream`` as ``consumer`` of ``group`` and applies each event to ``store``.

    ``on_applied`` (metrics) is called with each event the store applied; it must be quick
    and must not raise.

    ``run()`` returns after ``stop()`` (or when the broker closes), once every delivery it
    took is settled: applied and acked, or handed back with a nack.
    """

    def __init__(
        self,
        broker: Broker,
        store: TaskStore,
        *,
        stream: str = "results",
        group: str = "api",
        consumer: str | None = None,
        options: ConsumeOptions | None = None,
        max_in_flight: int = 1000,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        error_nack_delay: float = 1.0,
        on_applied: Callable[[ResultEvent], None] | None = None,
    ) -> None:
        self.broker = broker
        self.store = store
        self.stream = stream
        self.group = group
        self.consumer = consumer or default_consumer_name("api")
        self.options = options or ConsumeOptions()
        self.stats = ConsumerStats()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._error_nack_delay = error_nack_delay
        self._on_applied = on_applied
        self._lanes: dict[str, _Lane] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._acks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._intake: asyncio.Task[None] | None = None
        self._store_down = False

    def __repr__(self) -> str:
        return f"ResultsConsumer({self.stream!r}, group={self.group!r}, as={self.consumer!r})"

    async def run(self) -> None:
        """Consume until ``stop()``; survives broker and store outages."""
        if not await self._ensure_group():
            return
        self._intake = asyncio.current_task()
        try:
            await self._consume_until_stopped()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._stopping.is_set() or task is None:
                raise  # cancelled from outside: not ours to swallow
            task.uncancel()  # our own stop(): a normal end
        finally:
            self._intake = None
            while self._lane_tasks:  # (a lane starts its next applies as others end)
                await asyncio.gather(*self._lane_tasks, return_exceptions=True)
            if self._acks:
                await asyncio.gather(*self._acks, return_exceptions=True)

    async def _consume_until_stopped(self) -> None:
        delay = self._retry_initial
        while not self._stopping.is_set():
            deliveries = self.broker.consume(self.stream, self.group, self.consumer, self.options)
            try:
                await self._take(deliveries)
                return  # the broker was closed
            except BrokerError as exc:
                # Adapters ride out outages themselves; this is a last line of defence.
                log.warning("results consumer: consuming failed, restarting: %s", exc)
            finally:
                await deliveries.aclose()
            await self._pause(delay)
            delay = min(delay * 2, self._retry_max)

    async def stop(self) -> None:
        """Stop taking deliveries; those taken are finished (or nacked if the store is down)."""
        self._stopping.set()
        intake = self._intake
        if intake is not None and intake is not asyncio.current_task():
            intake.cancel()

    async def _ensure_group(self) -> bool:
        delay = self._retry_initial
        while not self._stopping.is_set():
            try:
                await self.broker.ensure_group(self.stream, self.group)
                return True
            except BrokerError as exc:
                log.warning("results consumer: cannot reach the broker yet: %s", exc)
                await self._pause(delay)
                delay = min(delay * 2, self._retry_max)
        return False

    async def _take(self, deliveries: AsyncGenerator[Delivery, None]) -> None:
        async for delivery in deliveries:
            try:
                event = decode_event(delivery.message.payload)
            except InvalidResultEvent as exc:
                self.stats.dead_lettered += 1
                log.warning("results consumer: dead-lettering %s: %s", delivery.entry_id, exc)
                await self._settle(delivery.dead_letter, str(exc)[:500])
                continue
            await self._slots.acquire()
            lane = self._lanes.get(event.task_id)
            if lane is None:
                lane = self._lanes[event.task_id] = _Lane()
            lane.queue.append((delivery, event))
            self._admit(event.task_id, lane)

    def _admit(self, task_id: str, lane: _Lane) -> None:
        """Start applying the lane's waiting deliveries that may run now (``_Lane.admits``)."""
        loop = asyncio.get_running_loop()
        while lane.queue and lane.admits(lane.queue[0][1]):
            delivery, event = lane.queue.popleft()
            lane.barrier = event.terminal
            lane.attempt = event.attempt
            lane.running += 1
            task = loop.create_task(self._handle(delivery, event))
            self._lane_tasks.add(task)
            task.add_done_callback(partial(self._applied, task_id, lane))

    def _applied(self, task_id: str, lane: _Lane, task: asyncio.Task[None]) -> None:
        self._lane_tasks.discard(task)
        self._slots.release()
        lane.running -= 1
        if task.cancelled():  # only when the loop is torn down: hand the rest back
            while lane.queue:
                delivery, _ = lane.queue.popleft()
                self._slots.release()
                self._spawn(self._settle(delivery.nack, 0.0))
        if lane.running:
            return
        lane.barrier = False
        if lane.queue:
            self._admit(task_id, lane)
        elif self._lanes.get(task_id) is lane:
            del self._lanes[task_id]

    async def _handle(self, delivery: Delivery, event: ResultEvent) -> None:
        with process_context(delivery):
            delay = self._retry_initial
            while True:
                try:
                    applied = await self.store.apply(event)
                except StoreUnavailable as exc:
                    if self._stopping.is_set():
                        self.stats.nacked += 1
                        await self._settle(delivery.nack, 0.0)
                        return
                    self.stats.store_retries += 1
                    if not self._store_down:
                        self._store_down = True
                        log.warning("results consumer: store unavailable, retrying: %s", exc)
                    await self._pause(delay)
                    delay = min(delay * 2, self._retry_max)
                    continue
                except Exception:
                    log.exception("results consumer: applying %s failed", delivery.entry_id)
                    self.stats.nacked += 1
                    await self._settle(delivery.nack, self._error_nack_delay)
                    return
                break
            if self._store_down:
                self._store_down = False
                log.info("results consumer: store reachable again")
            if applied:
                self.stats.applied += 1
                if self._on_applied is not None:  # metrics; the delivery's span is current
                    try:
                        self._on_applied(event)
                    except Exception:
                        log.exception("results consumer: on_applied failed")
            else:
                self.stats.ignored += 1
            span = trace.get_current_span()  # the delivery's "process results" span, if traced
            if span.is_recording():
                span.set_attributes(
                    {
                        "orchestrator.task.id": event.task_id,
                        "orchestrator.result.kind": event.kind.value,
                        "orchestrator.result.attempt": event.attempt,
                        "orchestrator.result.applied": applied,
                    }
                )
            # The lane moves on without waiting for the ack's round trip: the event is safely
            # applied, and a lost ack only means a harmless redelivery.
            self._spawn(self._settle(delivery.ack))

    def _spawn(self, settlement: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(settlement)
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _settle(self, action: Callable[..., Awaitable[None]], *args: object) -> None:
        # A failed settlement leaves the entry pending: it comes back, and apply is idempotent.
        try:
            await action(*args)
        except BrokerError as exc:
            log.warning("results consumer: settling a delivery failed: %s", exc)

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by ``stop()``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
