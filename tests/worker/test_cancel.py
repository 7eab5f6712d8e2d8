"""Cancellation in real workers (a fake LLM over HTTP, the in-memory broker, the cancel flag
raised as the API raises it): a task cancelled in the queue never calls a provider, a
running one stops its call at once (the HTTP stream to the provider is closed), publishes
``cancelled`` with the text answered so far and frees its slot; nothing is retried or
dead-lettered."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import generate_latest

from orchestrator_broker import MemoryBroker
from orchestrator_tasks import CANCEL_FLAGS
from orchestrator_tasks.messages import EventKind
from orchestrator_worker.cancels import Abort
from orchestrator_worker.metrics import WorkerMetrics
from tests.support.fake_llm import Reply
from tests.worker.faults import TimedFakeLLM
from tests.worker.support import TASKS, collect, kinds, settled, submit, wait_for

MINI = "openai/gpt-4o-mini"
#: A stream the fake holds open for about 30 s, a word every 0.1 s.
LONG = Reply.answer(*(f"w{i} " for i in range(300)), chunk_delay=0.1)


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
