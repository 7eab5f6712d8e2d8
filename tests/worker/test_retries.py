"""Retries of real provider calls (a fake LLM over HTTP, the in-memory broker): backoff that
honours Retry-After, clean restarts of cut streams, attempts exhausted, fallbacks, circuit
breakers, per-provider concurrency limits and cost."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator_broker import ConsumeOptions, MemoryBroker
from orchestrator_tasks.messages import Usage
from orchestrator_worker.breaker import BreakerState
from orchestrator_worker.pricing import Price
from orchestrator_worker.providers import ServerError
from tests.support.fake_llm import RecordedRequest, Reply
from tests.worker.faults import (
    FAIL,
    FAST_RETRIES,
    OK,
    D,
    RecordingHooks,
    S,
    TimedFakeLLM,
    of_attempt,
    streamed,
)
from tests.worker.support import (
    TASKS,
    FakeProvider,
    collect,
    kinds,
    registry,
    settled,
    submit,
    wait_for,
)

MINI = "openai/gpt-4o-mini"


async def test_a_rate_limit_waits_at_least_its_retry_after_then_succeeds(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.script(Reply.error(429, headers={"Retry-After": "2"}), Reply.answer("fine", " now"))
    task = await submit(broker, model=MINI)
    await start(**FAST_RETRIES)

    events = (await collect(broker, 1))[task.task_id]

    first, second = fake.times_of("openai")
    assert second - first >= 1.95  # the 2 s asked for (a lower bound only)
    assert fake.count == 2
    # Attempt 1 ended quietly (no terminal event); attempt 2 announced itself, then answered.
    assert [(e.kind, e.attempt) for e in events] == [(S, 2), (OK, 2)]
    assert events[-1].text == "fine now"
    await wait_for(lambda: settled(broker))
    assert await broker.dead_letters(TASKS) == []


async def test_server_errors_back_off_and_then_succeed(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.script(Reply.error(500), Reply.error(529), Reply.answer("third", " time"))
    hooks = RecordingHooks()
    task = await submit(broker, model=MINI)
    await start(hooks=hooks, **FAST_RETRIES)

    events = (await collect(broker, 1))[task.task_id]

    assert fake.count == 3
    assert events[-1].kind == OK
    assert (events[-1].attempt, events[-1].text) == (3, "third time")
    assert [(p, kind, n) for p, kind, n, _ in hooks.retries] == [
        ("openai", "server_error", 1),
        ("openai", "overloaded", 2),
    ]
    assert all(0 <= delay <= 0.1 for *_, delay in hooks.retries)


async def test_a_read_timeout_is_retried(broker: MemoryBroker, start, fake: TimedFakeLLM) -> None:
    fake.script(Reply.stalled(5.0, "never", after=0), Reply.answer("on", " time"))
    task = await submit(broker, model=MINI)
    await start(read_timeout=0.3, **FAST_RETRIES)

    events = (await collect(broker, 1))[task.task_id]

    assert [(e.kind, e.attempt) for e in events] == [(S, 2), (OK, 2)]
    assert events[-1].text == "on time"


async def test_a_task_timeout_is_retried(broker: MemoryBroker, start, fake: TimedFakeLLM) -> None:
    fake.script(Reply.answer("slow", delay=5.0), Reply.answer("quick"))
    task = await submit(broker, model=MINI)
    await start(task_timeout=0.3, **FAST_RETRIES)

    events = (await collect(broker, 1))[task.task_id]

    assert [(e.kind, e.attempt) for e in events] == [(S, 2), (OK, 2)]
    assert events[-1].text == "quick"


async def test_a_cut_stream_is_retried_from_scratch_and_clients_see_the_new_attempt(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.script(
        Reply.cut("Once", " upon", " a", chunk_delay=0.1),
        Reply.answer("Once", " upon", " a", " time", chunk_delay=0.1),
    )
    task = await submit(broker, model=MINI)
    await start(delta_flush_ms=20, started_after=0.05, **FAST_RETRIES)

    events = (await collect(broker, 1))[task.task_id]

    first, second = of_attempt(events, 1), of_attempt(events, 2)
    assert kinds(first)[0] == S
    assert D in kinds(first)  # the cut answer had streamed
    assert all(e.kind is not OK and e.kind is not FAIL for e in first)
    # In stream order: attempt 2's started comes before any of its text...
    assert kinds(second)[0] == S
    assert [e.seq for e in second] == list(range(len(second)))
    assert events.index(second[0]) < min(events.index(e) for e in second if e.kind is D)
    # ...and its deltas alone spell the whole answer: nothing spliced from attempt 1.
    assert second[-1].kind == OK
    assert streamed(second) == second[-1].text == "Once upon a time"


async def test_the_deltas_of_an_attempt_spell_its_result_exactly(
    broker: MemoryBroker, worker_factory
) -> None:
    prompt = " ".join(f"word{i}" for i in range(30))
    streaming = await submit(broker, prompt, parameters={"chunk_delay_ms": 5})
    instant = await submit(broker, "no deltas at all")
    await worker_factory(broker, delta_flush_ms=40)

    events = await collect(broker, 2)

    assert D in kinds(events[streaming.task_id])
    assert streamed(events[streaming.task_id]) == events[streaming.task_id][-1].text == prompt
    assert kinds(events[streaming.task_id])[-1] == OK
    assert kinds(events[instant.task_id]) == [OK]


async def test_an_authentication_error_fails_at_once_without_a_retry(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = Reply.error(401, code="invalid_api_key")
    hooks = RecordingHooks()
    task = await submit(broker, model=MINI)
    await start(hooks=hooks, **FAST_RETRIES)

    events = (await collect(broker, 1))[task.task_id]
    await wait_for(lambda: settled(broker))

    assert kinds(events) == [FAIL]
    assert events[0].error is not None
    assert events[0].error.type == "authentication"
    assert fake.count == 1
    assert hooks.retries == []
    assert await broker.backlog(TASKS, "workers") == 0
    assert await broker.dead_letters(TASKS) == []


async def test_a_task_out_of_attempts_fails_and_is_dead_lettered(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = Reply.error(503)
    hooks = RecordingHooks()
    task = await submit(broker, model=MINI)
    await start(
        hooks=hooks,
        max_attempts=3,
        breaker_failures=0,
        **FAST_RETRIES,
    )

    events = (await collect(broker, 1))[task.task_id]
    await wait_for(lambda: settled(broker))

    assert fake.count == 3
    assert [(e.kind, e.attempt) for e in events] == [(S, 2), (S, 3), (FAIL, 3)]
    error = events[-1].error
    assert error is not None
    assert error.type == "server_error"
    assert "gave up after 3 attempt" in error.message
    (letter,) = await broker.dead_letters(TASKS)
    assert "attempts exhausted" in letter.reason
    assert "server_error" in letter.reason
    assert letter.message is not None
    assert letter.message.payload["task_id"] == task.task_id
    assert [kind for _, kind in hooks.dead] == ["server_error"]
    assert len(hooks.retries) == 2


async def test_a_delivery_past_max_attempts_is_reported_and_dead_lettered_without_a_call(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    task = await submit(broker, model=MINI)
    await broker.ensure_group(TASKS, "workers")
    # Three deliveries that never ended (a poison task crashing its workers, say).
    crashing = broker.consume(TASKS, "workers", "crashing", ConsumeOptions(block=0.1))
    for _ in range(3):
        delivery = await anext(crashing)
        await delivery.nack(0)
    await crashing.aclose()
    await start(max_attempts=3)

    events = (await collect(broker, 1))[task.task_id]
    await wait_for(lambda: settled(broker))

    assert [(e.kind, e.attempt) for e in events] == [(FAIL, 4)]
    assert events[0].error is not None
    assert events[0].error.type == "attempts_exhausted"
    assert "gave up after 3 attempt" in events[0].error.message
    assert fake.count == 0
    (letter,) = await broker.dead_letters(TASKS)
    assert "attempts_exhausted" in letter.reason


async def test_a_replayed_task_numbers_its_attempts_on_from_before_with_a_fresh_budget(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    # Replayed from the dead letters after 3 attempts (the most allowed): it runs again,
    # attempts 4, 5 and 6, and only then gives up.
    fake.default = Reply.error(503)
    task = await submit(broker, model=MINI, prior_attempts=3)
    await start(max_attempts=3, breaker_failures=0, **FAST_RETRIES)

    events = (await collect(broker, 1))[task.task_id]
    await wait_for(lambda: settled(broker))

    assert fake.count == 3
    assert [(e.kind, e.attempt) for e in events] == [(S, 4), (S, 5), (S, 6), (FAIL, 6)]
    assert events[-1].error is not None
    assert "gave up after 3 attempt" in events[-1].error.message
    assert len(await broker.dead_letters(TASKS)) == 1


async def test_a_replayed_task_that_answers_says_so_in_its_next_attempt(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = Reply.answer("back", " again")
    task = await submit(broker, model=MINI, prior_attempts=5)
    await start(**FAST_RETRIES)

    events = (await collect(broker, 1))[task.task_id]

    # ``started`` at once, as for any retry: clients drop what they held of attempt 5.
    assert [(e.kind, e.attempt) for e in events] == [(S, 6), (OK, 6)]
    assert events[-1].text == "back again"


async def test_an_alias_falls_back_to_its_second_target(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    def reply(request: RecordedRequest) -> Reply:
        if request.api == "openai":
            return Reply.error(503)
        return Reply.answer("from", " gemini", usage=(3, 2))

    fake.respond_with(reply)
    hooks = RecordingHooks()
    task = await submit(broker, model="fast")
    await start(
        hooks=hooks,
        model_aliases={"fast": ("openai/gpt-4o-mini", "gemini/gemini-2.0-flash")},
        **FAST_RETRIES,
    )

    events = (await collect(broker, 1))[task.task_id]

    # Tried in the same attempt, at once: no retry, no second delivery.
    assert [(e.kind, e.attempt) for e in events] == [(OK, 1)]
    assert (events[0].provider, events[0].model) == ("gemini", "gemini-2.0-flash")
    assert events[0].text == "from gemini"
    assert (fake.count_of("openai"), fake.count_of("gemini")) == (1, 1)
    assert hooks.fallbacks == [("openai", "gemini", "server_error")]
    assert hooks.retries == []


async def test_an_alias_runs_on_the_first_target_that_takes_the_tasks_parameters(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.respond_with(lambda request: Reply.answer("from ", request.api))
    hooks = RecordingHooks()
    gemini_only = await submit(broker, model="fast", parameters={"top_k": 5})
    openai_only = await submit(broker, model="fast", parameters={"reasoning_effort": "low"})
    neither = await submit(broker, model="fast", parameters={"top_k": 5, "reasoning_effort": "low"})
    await start(
        hooks=hooks,
        model_aliases={"fast": ("openai/gpt-4o-mini", "gemini/gemini-2.0-flash")},
        **FAST_RETRIES,
    )

    events = await collect(broker, 3)

    assert [(e.kind, e.provider, e.text) for e in events[gemini_only.task_id]] == [
        (OK, "gemini", "from gemini")
    ]
    assert [(e.kind, e.provider) for e in events[openai_only.task_id]] == [(OK, "openai")]
    # top_k is Gemini's, reasoning_effort OpenAI's: no target takes both, the first says why.
    (refused,) = events[neither.task_id]
    assert refused.kind == FAIL
    assert refused.error is not None
    assert refused.error.type == "invalid_request"
    assert "top_k" in refused.error.message
    assert (fake.count_of("openai"), fake.count_of("gemini")) == (1, 1)
    assert hooks.fallbacks == []


async def test_an_alias_whose_first_target_streamed_text_retries_as_a_new_attempt(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.script(
        Reply.cut("half", " an", " answer", chunk_delay=0.1),
        Reply.answer("whole", " answer"),
    )
    task = await submit(broker, model="fast")
    await start(
        model_aliases={"fast": ("openai/gpt-4o-mini", "gemini/gemini-2.0-flash")},
        delta_flush_ms=20,
        **FAST_RETRIES,
    )

    events = (await collect(broker, 1))[task.task_id]

    # Text of the cut answer had gone out: only a new attempt can void it.
    assert D in kinds(of_attempt(events, 1))
    second = of_attempt(events, 2)
    assert kinds(second)[0] == S
    assert second[-1].kind == OK
    assert second[-1].text == "whole answer"
    assert fake.count_of("gemini") == 0  # attempt 2 began with the first target again


async def test_an_open_circuit_sends_an_alias_to_its_fallback_without_calling(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    def reply(request: RecordedRequest) -> Reply:
        return Reply.error(503) if request.api == "openai" else Reply.answer("ok")

    fake.respond_with(reply)
    hooks = RecordingHooks()
    await start(
        hooks=hooks,
        concurrency=1,
        breaker_failures=2,
        breaker_cooldown=60,
        model_aliases={"fast": ("openai/gpt-4o-mini", "gemini/gemini-2.0-flash")},
    )
    tasks = [await submit(broker, model="fast") for _ in range(5)]

    events = await collect(broker, 5)

    assert all(events[t.task_id][-1].kind == OK for t in tasks)
    assert all(events[t.task_id][-1].provider == "gemini" for t in tasks)
    assert fake.count_of("openai") == 2  # then the circuit opened
    assert fake.count_of("gemini") == 5
    assert hooks.breaker == [("openai", BreakerState.CLOSED, BreakerState.OPEN)]
    assert [reason for *_, reason in hooks.fallbacks] == ["server_error"] * 2 + ["circuit_open"] * 3


async def test_a_circuit_opens_stops_calls_and_half_opens_after_its_cooldown(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.script(Reply.error(500), Reply.error(500))  # then: answers (the default)
    hooks = RecordingHooks()
    first = await submit(broker, "first", model=MINI)
    await start(
        hooks=hooks,
        concurrency=10,
        breaker_failures=2,
        breaker_cooldown=1.0,
        max_attempts=8,
        max_deliveries=9,
        **FAST_RETRIES,
    )
    await wait_for(lambda: hooks.breaker)  # two failures: open
    opened = fake.times_of("openai")[-1]
    others = [await submit(broker, f"task {i}", model=MINI) for i in range(3)]
    await wait_for(lambda: len(hooks.deferrals) >= 4)

    assert fake.count_of("openai") == 2  # no call while open

    events = await collect(broker, 4)

    for task in (first, *others):
        assert events[task.task_id][-1].kind == OK
        assert events[task.task_id][-1].text == task.messages[-1].content
    third = fake.times_of("openai")[2]
    assert third - opened >= 0.95  # the cooldown (a lower bound only)
    assert fake.count_of("openai") == 2 + 4
    assert [(old, new) for _, old, new in hooks.breaker][:3] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert all(
        (provider, reason) == ("openai", "circuit_open") and delay >= 0.05
        for provider, delay, reason in hooks.deferrals
    )


async def test_a_circuit_open_through_the_last_attempt_fails_the_task(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = Reply.error(502)
    task = await submit(broker, model=MINI)
    await start(
        breaker_failures=1,
        breaker_cooldown=0.05,
        max_attempts=4,
        **FAST_RETRIES,
    )

    events = (await collect(broker, 1))[task.task_id]
    await wait_for(lambda: settled(broker))

    assert events[-1].kind == FAIL
    assert events[-1].error is not None
    assert events[-1].error.type == "server_error"
    assert len(await broker.dead_letters(TASKS)) == 1
    assert 1 <= fake.count <= 4


async def test_the_concurrency_limit_per_provider_is_never_exceeded(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = Reply(chunk_delay=0.03)  # echo the prompt word by word
    await start(
        concurrency=20,
        provider_concurrency={"openai": 3},
    )
    tasks = [await submit(broker, f"openai task number {i}", model=MINI) for i in range(12)]
    tasks += [await submit(broker, f"gemini task {i}", model="gemini/g") for i in range(6)]

    events = await collect(broker, len(tasks))

    assert all(events[t.task_id][-1].text == t.messages[-1].content for t in tasks)
    assert fake.most_active["openai"] == 3
    assert fake.most_active["gemini"] > 3  # no limit there


async def test_the_cost_comes_from_the_price_table(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.default = Reply.answer("priced", usage=(1000, 2000))
    priced = await submit(broker, model=MINI)
    unpriced = await submit(broker, model="openai/gpt-4o")
    echoed = await submit(broker, "two words")
    await start(
        model_prices={MINI: Price(input=0.15, output=0.60), "echo": Price(1.0, 2.0)},
    )

    events = await collect(broker, 3)

    result = events[priced.task_id][-1]
    assert result.usage == Usage(1000, 2000)
    assert result.cost_usd == pytest.approx((1000 * 0.15 + 2000 * 0.60) / 1e6)
    assert events[unpriced.task_id][-1].cost_usd is None
    assert events[echoed.task_id][-1].cost_usd == pytest.approx((2 * 1.0 + 2 * 2.0) / 1e6)


async def test_text_already_streamed_rules_out_a_fallback_within_the_attempt(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    # The first delta goes out as soon as text arrives (time to first token), so once the
    # first target has streamed some, only a new attempt can take it back: no fallback
    # within the attempt, a retry whose `started` voids the text, then the clean answer.
    fake.script(Reply.cut("spliced", " text"), Reply.answer("clean", " answer"))
    task = await submit(broker, model="fast")
    await start(
        model_aliases={"fast": ("openai/gpt-4o-mini", "gemini/gemini-2.0-flash")},
        delta_flush_ms=500,
        **FAST_RETRIES,
    )

    events = (await collect(broker, 1))[task.task_id]

    first = [e for e in events if e.attempt == 1]
    assert [e.kind for e in first][:2] == [S, D]
    assert first[1].text.startswith("spliced")
    assert not any(e.terminal for e in first)  # attempt 1 ended without a verdict
    last = events[-1]
    assert (last.kind, last.attempt, last.text) == (OK, 2, "clean answer")


async def test_hooks_that_raise_do_not_break_task_handling(
    broker: MemoryBroker, worker_factory
) -> None:
    class Broken(RecordingHooks):
        def retry_scheduled(self, *args: Any) -> None:
            raise RuntimeError("metrics bug")

        def dead_lettered(self, *args: Any) -> None:
            raise RuntimeError("metrics bug")

    failing = FakeProvider(chunks=(), error=ServerError("down", status=500))
    task = await submit(broker, model="fake")
    await worker_factory(
        broker, providers=registry(failing), hooks=Broken(), max_attempts=2, **FAST_RETRIES
    )

    events = (await collect(broker, 1))[task.task_id]

    assert (events[-1].kind, events[-1].attempt) == (FAIL, 2)
    assert failing.started == 2
    await wait_for(lambda: settled(broker))
    assert len(await broker.dead_letters(TASKS)) == 1
