"""Waiting is not an attempt, and a task's deadline bounds it all (real workers, a fake LLM
over HTTP, the in-memory broker): a task that waits out another task's rate limit or an open
circuit keeps its attempts and runs once the provider takes calls again; a task fails from
its own calls (``MAX_ATTEMPTS``, their error type) or from ``TASK_DEADLINE_SECONDS`` after
its submission (``deadline_exceeded``), and its error says which."""

from __future__ import annotations

import time

from orchestrator_broker import MemoryBroker
from tests.support.fake_llm import Reply
from tests.worker.faults import FAIL, FAST_RETRIES, OK, RecordingHooks, TimedFakeLLM
from tests.worker.support import TASKS, collect, kinds, settled, submit, wait_for

MINI = "openai/gpt-4o-mini"


async def test_a_task_waiting_out_a_pause_keeps_its_attempts_and_then_runs(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    # The first task's 429 pauses openai for 1.5 s; the second task, submitted during the
    # pause, is handed back (several times: each deferral is a fraction of what is left)
    # without spending any of its single attempt, and then succeeds.
    fake.script(Reply.error(429, headers={"Retry-After": "1.5"}))
    hooks = RecordingHooks()
    first = await submit(broker, "first", model=MINI, submitted_at=time.time())
    await start(hooks=hooks, max_attempts=1, task_deadline=60.0)
    await wait_for(lambda: hooks.pauses)
    second = await submit(broker, "second", model=MINI, submitted_at=time.time())

    events = await collect(broker, 2)
    await wait_for(lambda: settled(broker))

    (failed,) = events[first.task_id]
    assert failed.kind == FAIL
    assert failed.error is not None
    assert failed.error.type == "rate_limit"  # its own call's failure
    assert "gave up after 1 attempt" in failed.error.message
    assert kinds(events[second.task_id])[-1] == OK
    assert {event.attempt for event in events[second.task_id]} == {1}
    assert fake.count_of("openai") == 2  # one call per task: waiting called nobody
    assert [provider for provider, _, _ in hooks.deferrals] == ["openai"] * len(hooks.deferrals)
    assert hooks.deferrals
    assert len(await broker.dead_letters(TASKS)) == 1


async def test_a_task_whose_deadline_passes_during_a_pause_fails_with_deadline_exceeded(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.script(Reply.error(429, headers={"Retry-After": "30"}))
    hooks = RecordingHooks()
    first = await submit(broker, "first", model=MINI, submitted_at=time.time())
    await start(hooks=hooks, max_attempts=3, task_deadline=2.0, **FAST_RETRIES)
    await wait_for(lambda: hooks.pauses)
    second = await submit(broker, "second", model=MINI, submitted_at=time.time())

    events = await collect(broker, 2)
    await wait_for(lambda: settled(broker))

    assert fake.count_of("openai") == 1  # nobody calls a provider paused for 30 s
    for task in (first, second):
        (failed,) = events[task.task_id]
        assert failed.kind == FAIL
        assert failed.error is not None
        assert failed.error.type == "deadline_exceeded"  # not another task's rate_limit
        assert failed.attempt == 1
    first_error = events[first.task_id][0].error
    second_error = events[second.task_id][0].error
    assert first_error is not None
    assert second_error is not None
    assert "no time for a retry" in first_error.message
    assert "rate_limit" in first_error.message  # what its own call said
    assert "passes while provider openai is paused after a rate_limit" in second_error.message
    assert [kind for _, kind in hooks.dead] == ["deadline_exceeded", "deadline_exceeded"]
    assert all("deadline exceeded" in letter.reason for letter in await broker.dead_letters(TASKS))


async def test_waiting_out_an_open_circuit_spends_no_attempt(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    # Two 502s open the circuit (BREAKER_FAILURES=1) for 0.3 s each time; a task with two
    # attempts fails on its own two calls, however often it was held back in between.
    fake.default = Reply.error(502)
    hooks = RecordingHooks()
    task = await submit(broker, model=MINI, submitted_at=time.time())
    await start(
        hooks=hooks,
        max_attempts=2,
        breaker_failures=1,
        breaker_cooldown=0.3,
        task_deadline=60.0,
        **FAST_RETRIES,
    )

    (failed,) = (await collect(broker, 1))[task.task_id][-1:]
    await wait_for(lambda: settled(broker))

    assert failed.kind == FAIL
    assert failed.error is not None
    assert failed.error.type == "server_error"
    assert "gave up after 2 attempt" in failed.error.message
    assert failed.attempt == 2
    assert fake.count_of("openai") == 2
    assert hooks.deferrals  # it was held back while the circuit was open


async def test_the_deadline_cuts_a_call_short_without_blaming_the_provider(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = Reply(delay=5.0)
    hooks = RecordingHooks()
    task = await submit(broker, model=MINI, submitted_at=time.time())
    worker = await start(
        hooks=hooks, read_timeout=30.0, task_timeout=20.0, task_deadline=0.5, breaker_failures=1
    )

    (failed,) = (await collect(broker, 1))[task.task_id][-1:]
    await wait_for(lambda: settled(broker))

    assert failed.kind == FAIL
    assert failed.error is not None
    assert failed.error.type == "deadline_exceeded"
    assert "during the call to openai" in failed.error.message
    assert not hooks.breaker  # a deadline is not the provider's failure: no circuit opened
    assert worker.worker.guards["openai"].breaker.hold() is None


async def test_a_task_queued_past_its_deadline_fails_without_a_call(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    task = await submit(broker, model=MINI, submitted_at=time.time() - 120.0)
    await start(task_deadline=60.0)

    (failed,) = (await collect(broker, 1))[task.task_id]
    await wait_for(lambda: settled(broker))

    assert failed.kind == FAIL
    assert failed.error is not None
    assert failed.error.type == "deadline_exceeded"
    assert "before attempt 1 could call a provider" in failed.error.message
    assert fake.count == 0
    (letter,) = await broker.dead_letters(TASKS)
    assert letter.reason.startswith("deadline exceeded:")
