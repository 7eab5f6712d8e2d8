"""Cancellation in real workers (a fake LLM over HTTP, the in-memory broker, the cancel flag
raised as the API raises it): a task cancelled in the queue never calls a provider, a
running one stops its call at once (the HTTP stream to the provider is closed), publishes
``cancelled`` with the text answered so far and frees its slot; nothing is retried or
dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection

import pytest
from prometheus_client import generate_latest

from orchestrator_broker import MemoryBroker
from orchestrator_tasks import CANCEL_FLAGS
from orchestrator_tasks.messages import EventKind
from orchestrator_worker.cancels import Abort, Cancels
from orchestrator_worker.metrics import WorkerMetrics
from tests.support.fake_llm import Reply
from tests.worker.faults import TimedFakeLLM
from tests.worker.support import TASKS, collect, kinds, settled, submit, wait_for

MINI = "openai/gpt-4o-mini"
#: A stream the fake holds open for about 30 s, a word every 0.1 s.
LONG = Reply.answer(*(f"w{i} " for i in range(300)), chunk_delay=0.1)


class FlagReads(MemoryBroker):
    """Counts the broker reads of cancel flags."""

    reads = 0

    async def raised_flags(self, group: str, names: Collection[str]) -> set[str]:
        self.reads += 1
        return await super().raised_flags(group, names)


@pytest.fixture
async def broker() -> AsyncIterator[FlagReads]:
    """The in-memory broker, counting its reads of cancel flags."""
    memory = FlagReads()
    yield memory
    await memory.close()


async def test_a_task_cancelled_in_the_queue_never_calls_a_provider(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    task = await submit(broker, model=MINI, submitted_at=time.time())
    await broker.raise_flag(CANCEL_FLAGS, task.task_id, ttl=60)
    metrics = WorkerMetrics()
    await start(metrics=metrics)

    events = (await collect(broker, 1))[task.task_id]
    await wait_for(lambda: settled(broker))

    assert kinds(events) == [EventKind.CANCELLED]
    assert events[0].text == ""
    assert fake.count == 0
    assert await broker.dead_letters(TASKS) == []
    assert await broker.backlog(TASKS, "workers") == 0  # acked, not handed back
    exposition = generate_latest(metrics.registry).decode()
    assert 'orchestrator_worker_tasks_cancelled_total{stage="queued"} 1.0' in exposition


async def test_a_running_task_stops_its_call_and_reports_the_text_so_far(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = LONG
    await submit(broker, "other", model="echo")
    task = await submit(broker, model=MINI, submitted_at=time.time())
    running = await start(max_attempts=3)
    await collect(broker, 1)  # the echo task ended: the worker is past start-up
    seen: list[EventKind] = []

    async def some_text() -> bool:
        events = (await collect(broker, 0, events=1, consumer="watcher"))[task.task_id]
        seen.extend(event.kind for event in events)
        return EventKind.DELTA in seen

    await wait_for(some_text)
    await broker.raise_flag(CANCEL_FLAGS, task.task_id, ttl=60)

    rest = (await collect(broker, 1, consumer="watcher"))[task.task_id]
    await wait_for(lambda: settled(broker))
    await wait_for(lambda: len(fake.disconnected) == 1)

    ended = rest[-1]
    assert ended.kind is EventKind.CANCELLED
    assert ended.text.startswith("w0 ")  # what the provider had sent when it was stopped
    assert len(ended.text.split()) < 300
    assert fake.count_of("openai") == 1  # stopped, not retried
    assert fake.disconnected[0].api == "openai"  # the stream to the provider was closed
    assert running.worker.in_flight == 0  # the slot is free
    assert await broker.dead_letters(TASKS) == []


async def test_a_cancelled_task_nobody_streams_reports_its_text_so_far(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = LONG
    task = await submit(broker, model=MINI, submitted_at=time.time(), deltas=False)
    await start(started_after=0.05)
    started = (await collect(broker, 0, events=1, consumer="watcher"))[task.task_id]
    assert kinds(started) == [EventKind.STARTED]
    await asyncio.sleep(0.35)  # a few words in, none of them published
    await broker.raise_flag(CANCEL_FLAGS, task.task_id, ttl=60)

    rest = (await collect(broker, 1, consumer="watcher"))[task.task_id]

    assert kinds(rest) == [EventKind.CANCELLED]
    assert rest[0].text.startswith("w0 w1 ")
    assert len(rest[0].text.split()) < 300


async def test_a_cancel_for_a_task_this_worker_does_not_run_changes_nothing(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    task = await submit(broker, model=MINI, submitted_at=time.time())
    await start()
    await broker.raise_flag(CANCEL_FLAGS, "someone-else", ttl=60)

    events = (await collect(broker, 1))[task.task_id]

    assert kinds(events)[-1] is EventKind.SUCCEEDED


async def test_an_abort_takes_back_only_its_own_cancel() -> None:
    outcomes: list[bool] = []
    entered = asyncio.Event()

    async def call(abort_box: list[Abort]) -> None:
        abort = Abort("t1", asyncio.current_task())
        abort_box.append(abort)
        abort.enter_call()
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcomes.append(abort.took_cancel())
            if not outcomes[-1]:
                raise
        finally:
            abort.leave_call()

    for shutdown_too in (False, True):
        entered.clear()
        box: list[Abort] = []
        running = asyncio.create_task(call(box))
        await entered.wait()
        box[0].request()
        box[0].request()  # a repeated cancel is harmless
        if shutdown_too:
            running.cancel()  # a shutdown on top: it must still hand the task back
        await asyncio.wait([running])
        assert running.cancelled() is shutdown_too
    assert outcomes == [True, False]


@contextlib.asynccontextmanager
async def _listening(cancels: Cancels, broker: FlagReads) -> AsyncIterator[None]:
    """``cancels`` watching ``broker`` inside the block, its subscription confirmed; the
    watcher stopped on leaving it."""
    watcher = asyncio.create_task(cancels.watch(asyncio.Event()))

    async def subscribed() -> bool:
        # A task submitted far ahead (past any clock margin) and never flagged: answered
        # without a read once the watcher listens.
        reads = broker.reads
        return not await cancels.cancelled("never", time.time() + 3600) and broker.reads == reads

    try:
        await wait_for(subscribed)
        yield
    finally:
        watcher.cancel()
        await asyncio.wait([watcher])


async def test_the_watcher_answers_for_tasks_submitted_while_it_listened() -> None:
    broker = FlagReads()
    cancels = Cancels(broker, clock_margin=0.0)
    before = time.time() - 60
    await broker.raise_flag(CANCEL_FLAGS, "old", ttl=60)  # before the watcher listened
    async with _listening(cancels, broker):
        now = time.time()
        reads = broker.reads
        assert await cancels.cancelled("kept", now) is False
        assert broker.reads == reads, "not heard: not cancelled, without a read"

        await broker.raise_flag(CANCEL_FLAGS, "gone", ttl=60)
        await wait_for(lambda: cancels.cancelled("gone", now))
        reads = broker.reads
        assert await cancels.cancelled("gone", now) is True
        assert broker.reads == reads + 1, "heard: the broker has the last word"

        # Submitted before the watcher listened: only the broker can tell.
        assert await cancels.cancelled("old", before) is True
        assert await cancels.cancelled("old-unflagged", before) is False
        assert broker.reads == reads + 3
    # No longer listening: every check reads the broker.
    assert await cancels.cancelled("kept", time.time()) is False
    assert broker.reads == reads + 4


async def test_a_task_submitted_within_the_clock_margin_reads_the_broker() -> None:
    broker = FlagReads()
    cancels = Cancels(broker, clock_margin=30.0)
    async with _listening(cancels, broker):
        reads = broker.reads
        assert await cancels.cancelled("t", time.time()) is False
        assert broker.reads == reads + 1


async def test_forgetting_a_flag_moves_what_the_watcher_can_answer_for() -> None:
    broker = FlagReads()
    cancels = Cancels(broker, memory=2, clock_margin=0.0)
    async with _listening(cancels, broker):
        submitted = time.time()
        for name in ("a", "b", "c"):  # one over the memory: "a" is forgotten
            await broker.raise_flag(CANCEL_FLAGS, name, ttl=60)
        await wait_for(lambda: cancels.cancelled("c", time.time()))
        reads = broker.reads
        # A task submitted before "a" was forgotten cannot be answered for from memory.
        assert await cancels.cancelled("a", submitted) is True
        assert await cancels.cancelled("z", submitted) is False
        assert broker.reads == reads + 2


async def test_a_worker_listening_for_flags_reads_none_for_tasks_nobody_cancelled(
    broker: FlagReads, start, fake: TimedFakeLLM
) -> None:
    fake.default = Reply.answer("busy", delay=0.3)
    await submit(broker, "first", model=MINI, submitted_at=time.time())
    # One slot: the next tasks wait in the queue behind the first.
    await start(concurrency=1)
    await wait_for(lambda: fake.count == 1)
    # Submitted well after the worker's watcher subscribed (beyond its clock margin).
    later = time.time() + 10
    kept = await submit(broker, "kept", model=MINI, submitted_at=later)
    gone = await submit(broker, "gone", model=MINI, submitted_at=later)
    await broker.raise_flag(CANCEL_FLAGS, gone.task_id, ttl=60)
    reads = broker.reads

    events = await collect(broker, 3)

    assert kinds(events[kept.task_id])[-1] is EventKind.SUCCEEDED
    assert kinds(events[gone.task_id]) == [EventKind.CANCELLED]
    assert fake.count == 2  # the cancelled task never reached the provider
    assert broker.reads == reads + 1, "one read: the flag the watcher had heard"
