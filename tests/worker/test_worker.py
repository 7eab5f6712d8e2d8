"""The worker against the in-memory broker: what each task produces, and the worker's life."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from orchestrator_broker import MemoryBroker, Message
from orchestrator_tasks.messages import EventKind, Usage
from orchestrator_worker.providers import CompletionRequest, Finish, StreamItem
from tests.worker.support import (
    RESULTS,
    TASKS,
    FakeProvider,
    collect,
    kinds,
    registry,
    settled,
    submit,
    wait_for,
)

S, D, OK, FAIL = EventKind.STARTED, EventKind.DELTA, EventKind.SUCCEEDED, EventKind.FAILED


async def test_echo_answers_with_the_prompt_exactly(broker: MemoryBroker, worker_factory) -> None:
    prompt = "  Hello,\tworld!\n\nHow are  you? "
    task = await submit(broker, prompt, system="be brief")
    await worker_factory(broker)

    events = (await collect(broker, 1))[task.task_id]

    assert kinds(events) == [OK], "an instant answer needs no started event"
    (result,) = events
    assert result.text == prompt
    assert result.usage == Usage(input_tokens=2 + 5, output_tokens=5)
    assert result.finish_reason == "stop"
    assert (result.provider, result.model) == ("echo", "echo")
    assert (result.task_id, result.tenant, result.attempt, result.seq) == (
        task.task_id,
        "tenant-a",
        1,
        0,
    )


async def test_a_slow_task_is_reported_started_before_it_ends(
    broker: MemoryBroker, worker_factory
) -> None:
    gate = asyncio.Event()
    slow = FakeProvider(gate=gate)
    task = await submit(broker, model="fake")
    await worker_factory(broker, providers=registry(slow), delta_flush_ms=20, started_after=0.05)

    first = (await collect(broker, 0, events=1))[task.task_id]
    gate.set()
    rest = (await collect(broker, 1))[task.task_id]

    assert [(e.kind, e.seq, e.provider, e.model) for e in first] == [(S, 0, "fake", "fake")]
    assert kinds(rest) == [OK]
    assert rest[0].seq == 1


async def test_the_task_is_acked_once_it_ended(broker: MemoryBroker, worker_factory) -> None:
    await submit(broker)
    await worker_factory(broker)
    await collect(broker, 1)

    await wait_for(lambda: settled(broker))
    assert await broker.backlog(TASKS, "workers") == 0


async def test_events_are_numbered_in_publish_order(broker: MemoryBroker, worker_factory) -> None:
    slow = FakeProvider(chunks=[f"w{i} " for i in range(12)], delay=0.02)
    task = await submit(broker, model="fake")
    await worker_factory(broker, providers=registry(slow), delta_flush_ms=30)

    events = (await collect(broker, 1))[task.task_id]

    assert [event.seq for event in events] == list(range(len(events)))
    assert events[0].kind == S
    assert events[-1].kind == OK
    assert set(kinds(events[1:-1])) == {D}
    assert len(events) > 2, "a 240 ms stream with a 30 ms flush sends deltas"
    streamed = "".join(event.text for event in events if event.kind == D)
    assert events[-1].text == "".join(slow.chunks)
    assert events[-1].text.startswith(streamed)
    assert all(event.text for event in events if event.kind == D)


async def test_many_small_chunks_are_coalesced_into_few_deltas(
    broker: MemoryBroker, worker_factory
) -> None:
    chatty = FakeProvider(chunks=["x"] * 300, delay=0.001)
    task = await submit(broker, model="fake")
    await worker_factory(broker, providers=registry(chatty), delta_flush_ms=100)

    events = (await collect(broker, 1))[task.task_id]

    deltas = [event for event in events if event.kind == D]
    assert len(deltas) < 300 / 5
    assert events[-1].text == "x" * 300


class FirstThenWait(FakeProvider):
    """Streams one chunk, then waits for ``gate`` before the rest."""

    async def _stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        yield "first "
        assert self.gate is not None
        await self.gate.wait()
        yield "and the rest"
        yield Finish(usage=Usage(1, 2), finish_reason="stop")


async def test_the_first_text_goes_out_at_once_and_later_text_on_the_flush_clock(
    broker: MemoryBroker, worker_factory
) -> None:
    gate = asyncio.Event()
    provider = FirstThenWait(gate=gate)
    task = await submit(broker, model="fake")
    # A flush clock far slower than the test: only the first delta can come before the gate.
    await worker_factory(broker, providers=registry(provider), delta_flush_ms=60_000)

    first = (await collect(broker, 0, events=2))[task.task_id]
    gate.set()
    rest = (await collect(broker, 1))[task.task_id]

    assert [(e.kind, e.text) for e in first] == [(S, ""), (D, "first ")]
    # the rest waited for the (slow) clock; the end sent it as the last delta
    assert [(e.kind, e.text) for e in rest] == [(D, "and the rest"), (OK, "first and the rest")]


async def test_an_answer_faster_than_one_flush_has_no_deltas(
    broker: MemoryBroker, worker_factory
) -> None:
    task = await submit(broker, "one two three four five six")
    await worker_factory(broker, delta_flush_ms=10_000)

    assert kinds((await collect(broker, 1))[task.task_id]) == [OK]


async def test_a_task_nobody_streams_publishes_its_text_only_in_the_result(
    broker: MemoryBroker, worker_factory
) -> None:
    slow = FakeProvider(chunks=[f"w{i} " for i in range(12)], delay=0.02)
    task = await submit(broker, model="fake", deltas=False)
    # 240 ms of text against a 30 ms flush clock: a streamed task sends several deltas.
    await worker_factory(broker, providers=registry(slow), delta_flush_ms=30, started_after=0.1)

    events = (await collect(broker, 1))[task.task_id]

    assert kinds(events) == [S, OK], "started after 0.1 s, then the whole answer, no delta"
    assert events[-1].text == "".join(slow.chunks)
    assert [event.seq for event in events] == [0, 1]


async def test_a_task_without_model_uses_the_default_model(
    broker: MemoryBroker, worker_factory
) -> None:
    fake = FakeProvider(name="fake", chunks=["hi"])
    task = await submit(broker, model=None)
    await worker_factory(broker, providers=registry(fake, default_model="fake/small"))

    result = (await collect(broker, 1))[task.task_id][-1]

    assert (result.kind, result.text, result.provider, result.model) == (OK, "hi", "fake", "small")
    assert fake.requests[0].model == "small"


async def test_a_worker_with_echo_off_fails_echo_tasks_as_an_unknown_model(
    broker: MemoryBroker, worker_factory
) -> None:
    from orchestrator_worker.providers import default_registry

    no_echo = default_registry("echo", echo=False)
    assert "echo" not in no_echo.names
    assert "echo" in default_registry("echo").names
    task = await submit(broker, model="echo")
    await worker_factory(broker, providers=no_echo, default_model="fake")

    events = (await collect(broker, 1))[task.task_id]

    assert [(e.kind, e.error.type if e.error else None) for e in events] == [
        (FAIL, "invalid_model")
    ]


async def test_an_unknown_model_fails_with_invalid_model(
    broker: MemoryBroker, worker_factory
) -> None:
    task = await submit(broker, model="nonesuch/large")
    await worker_factory(broker)

    events = (await collect(broker, 1))[task.task_id]

    assert kinds(events) == [FAIL]
    assert events[-1].error is not None
    assert events[-1].error.type == "invalid_model"
    assert "nonesuch/large" in events[-1].error.message
    await wait_for(lambda: settled(broker))
    assert await broker.backlog(TASKS, "workers") == 0  # not retried


async def test_a_task_over_its_timeout_fails_with_timeout(
    broker: MemoryBroker, worker_factory
) -> None:
    task = await submit(broker, parameters={"latency_ms": 60_000})
    await worker_factory(broker, task_timeout=0.2, max_attempts=1)  # timeouts are retried

    events = (await collect(broker, 1))[task.task_id]

    assert kinds(events) == [FAIL]  # no text, and less than a second: no started either
    assert events[-1].error is not None
    assert events[-1].error.type == "timeout"


async def test_a_provider_error_is_reported_with_its_type(
    broker: MemoryBroker, worker_factory
) -> None:
    # (a non-retryable one: retryable errors are retried, see test_retries.py)
    task = await submit(broker, parameters={"fail": "content_filter"})
    await worker_factory(broker)

    events = (await collect(broker, 1))[task.task_id]

    assert kinds(events) == [FAIL]
    assert events[-1].error is not None
    assert events[-1].error.type == "content_filter"


async def test_an_unexpected_exception_fails_as_internal_without_details(
    broker: MemoryBroker, worker_factory
) -> None:
    broken = FakeProvider(error=RuntimeError("api_key=sk-secret leaked"))
    task = await submit(broker, model="fake")
    await worker_factory(broker, providers=registry(broken))

    events = (await collect(broker, 1))[task.task_id]

    assert events[-1].kind == FAIL
    error = events[-1].error
    assert error is not None
    assert error.type == "internal"
    assert "sk-secret" not in error.message
    assert "Traceback" not in error.message


async def test_a_payload_that_is_not_a_task_is_dead_lettered(
    broker: MemoryBroker, worker_factory
) -> None:
    await broker.publish(TASKS, Message(payload=["not", "a", "task"]))
    await broker.publish(TASKS, Message(payload={"task_id": "t-bad", "tenant": "tenant-a"}))
    await worker_factory(broker)

    events = await collect(broker, 1)

    # The one that names its task also tells the client it failed.
    assert kinds(events["t-bad"]) == [FAIL]
    assert events["t-bad"][0].error is not None
    assert events["t-bad"][0].error.type == "invalid_task"
    await wait_for(lambda: settled(broker))
    letters = await broker.dead_letters(TASKS)
    assert len(letters) == 2
    assert "not an object" in letters[0].reason
    assert "prompt" in letters[1].reason
    assert await broker.pending_count(TASKS, "workers") == 0


async def test_a_redelivered_task_reports_its_attempt(broker: MemoryBroker, worker_factory) -> None:
    task = await submit(broker)
    await broker.ensure_group(TASKS, "workers")
    other = broker.consume(TASKS, "workers", "crashed-worker")
    first = await anext(other)
    await first.nack(0)
    await other.aclose()
    await worker_factory(broker)

    events = (await collect(broker, 1))[task.task_id]

    # A retried attempt says so at once (clients drop what an earlier attempt streamed).
    assert [(event.kind, event.attempt, event.seq) for event in events] == [(S, 2, 0), (OK, 2, 1)]


async def test_never_more_tasks_in_flight_than_slots(broker: MemoryBroker, worker_factory) -> None:
    fake = FakeProvider(delay=0.01)
    for _ in range(40):
        await submit(broker, model="fake")
    await worker_factory(broker, providers=registry(fake), concurrency=4)

    events = await collect(broker, 40)

    assert len(events) == 40
    assert fake.most_running == 4


async def test_a_thousand_slow_tasks_run_concurrently(broker: MemoryBroker, worker_factory) -> None:
    for _ in range(1000):
        await submit(broker, "slow answer", parameters={"latency_ms": 300})
    running = await worker_factory(broker, concurrency=1000)

    events = await collect(broker, 1000, timeout=60)

    assert len(events) == 1000
    assert all(task_events[-1].kind == OK for task_events in events.values())
    assert running.worker.in_flight == 0 or not running.task.done()


async def test_stop_lets_in_flight_tasks_finish_and_leaves_the_rest(
    broker: MemoryBroker, worker_factory
) -> None:
    gate = asyncio.Event()
    fake = FakeProvider(gate=gate)
    for _ in range(5):
        await submit(broker, model="fake")
    running = await worker_factory(broker, providers=registry(fake), concurrency=2)
    await wait_for(lambda: fake.started == 2)

    running.worker.stop()
    await asyncio.sleep(0.05)
    assert not running.task.done(), "in-flight tasks are still running"
    gate.set()
    await running.stop()

    events = await collect(broker, 2)
    assert len(events) == 2
    assert all(kinds(task_events)[-1] == OK for task_events in events.values())
    assert fake.started == 2
    assert await broker.pending_count(TASKS, "workers") == 0
    assert await broker.backlog(TASKS, "workers") == 3


async def test_tasks_unfinished_after_the_grace_period_are_handed_back(
    broker: MemoryBroker, worker_factory
) -> None:
    blocked = FakeProvider(gate=asyncio.Event())
    task = await submit(broker, model="fake")
    first = await worker_factory(
        broker, providers=registry(blocked), shutdown_grace=0.1, started_after=0.02
    )
    await collect(broker, 0, events=1)  # attempt 1 reported started
    await wait_for(lambda: blocked.started == 1)

    await first.stop()

    assert await broker.pending_count(TASKS, "workers") == 0
    assert await broker.backlog(TASKS, "workers") == 1
    # Another worker takes it at once, as the next attempt.
    fast = FakeProvider(chunks=["done"])
    await worker_factory(broker, providers=registry(fast), consumer_name="worker-2")
    events = (await collect(broker, 1))[task.task_id]
    assert [(event.kind, event.attempt) for event in events] == [(S, 2), (OK, 2)]
    assert events[-1].text == "done"


async def test_a_second_stop_with_force_skips_the_grace_period(
    broker: MemoryBroker, worker_factory
) -> None:
    blocked = FakeProvider(gate=asyncio.Event())
    await submit(broker, model="fake")
    running = await worker_factory(broker, providers=registry(blocked), shutdown_grace=60)
    await wait_for(lambda: blocked.started == 1)

    running.worker.stop()
    running.worker.stop(force=True)
    await running.stop(timeout=10)

    assert await broker.backlog(TASKS, "workers") == 1


async def test_cancelling_run_hands_tasks_back(broker: MemoryBroker, worker_factory) -> None:
    blocked = FakeProvider(gate=asyncio.Event())
    await submit(broker, model="fake")
    running = await worker_factory(broker, providers=registry(blocked))
    await wait_for(lambda: blocked.started == 1)

    running.task.cancel()
    await asyncio.wait([running.task])

    assert running.task.cancelled()
    assert await broker.backlog(TASKS, "workers") == 1
    assert await broker.pending_count(TASKS, "workers") == 0


async def test_stop_before_any_task_returns_promptly(broker: MemoryBroker, worker_factory) -> None:
    running = await worker_factory(broker)
    await asyncio.sleep(0.05)

    await running.stop(timeout=5)

    assert running.task.done()


async def test_a_worker_owning_its_providers_closes_them(broker: MemoryBroker) -> None:
    from orchestrator_worker import Worker
    from tests.worker.support import settings

    worker = Worker(broker, settings())
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.02)
    worker.stop()
    async with asyncio.timeout(5):
        await task


async def test_results_carry_no_events_for_other_tasks(
    broker: MemoryBroker, worker_factory
) -> None:
    tasks = [await submit(broker, f"prompt {i}") for i in range(20)]
    await worker_factory(broker, concurrency=8)

    events = await collect(broker, 20)

    for task in tasks:
        assert events[task.task_id][-1].text == task.messages[-1].content
    assert await broker.backlog(RESULTS, "test") == 0


async def test_each_event_message_is_named_by_task_attempt_and_seq(
    broker: MemoryBroker, worker_factory
) -> None:
    task = await submit(broker, parameters={"latency_ms": 200})
    await worker_factory(broker, started_after=0.05)
    await collect(broker, 1)

    await broker.ensure_group(RESULTS, "ids")
    results = broker.consume(RESULTS, "ids", "reader")
    ids = [(await anext(results)).message.id for _ in range(2)]
    await results.aclose()

    assert ids == [f"{task.task_id}:1:0", f"{task.task_id}:1:1"]


async def test_a_bug_outside_the_provider_call_still_ends_the_task(
    broker: MemoryBroker, worker_factory
) -> None:
    class BadUsage(FakeProvider):
        async def _stream(self, request):  # type: ignore[no-untyped-def]
            yield "text"
            yield Finish(usage={"input_tokens": 1})  # type: ignore[arg-type]

    task = await submit(broker, model="fake")
    await worker_factory(broker, providers=registry(BadUsage()))

    events = (await collect(broker, 1))[task.task_id]

    assert kinds(events)[-1] == FAIL
    assert events[-1].error is not None
    assert events[-1].error.type == "internal"
    await wait_for(lambda: settled(broker))
    assert await broker.backlog(TASKS, "workers") == 0
