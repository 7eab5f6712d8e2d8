"""A provider's ``Retry-After`` pauses it for the whole worker process: the pause on its own
(an injected clock), then real workers against a fake LLM over HTTP: other tasks do not call
the paused provider, aliases fall back at once, a shorter hint does not shorten the pause,
and the decisions show in logs, hooks, metrics and traces."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from orchestrator_broker import MemoryBroker
from orchestrator_telemetry import TracingBroker, process_context
from orchestrator_worker import Worker
from orchestrator_worker.breaker import (
    CIRCUIT_OPEN,
    PAUSED,
    BreakerState,
    CircuitBreaker,
    Hold,
)
from orchestrator_worker.limits import ProviderGuards
from orchestrator_worker.metrics import WorkerMetrics
from orchestrator_worker.retry import MAX_HINT_SECONDS
from tests.support.fake_llm import RecordedRequest, Reply
from tests.worker.faults import (
    FAIL,
    FAST_RETRIES,
    OK,
    RecordingHooks,
    TimedFakeLLM,
    llm_registry,
)
from tests.worker.support import (
    RESULTS,
    TASKS,
    collect,
    settings,
    settled,
    submit,
    wait_for,
)

MINI = "openai/gpt-4o-mini"
FAST = {"fast": (MINI, "gemini/gemini-2.0-flash")}
BREAKER_LOG = "orchestrator_worker.breaker"

# -- the pause on its own (an injected clock) --------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(
    clock: Clock, *, failures: int = 5, cooldown: float = 30.0, **kwargs: Any
) -> CircuitBreaker:
    return CircuitBreaker("openai", failures=failures, cooldown=cooldown, clock=clock, **kwargs)


def test_a_paused_provider_admits_no_call_until_the_pause_ends() -> None:
    clock = Clock()
    guard = breaker(clock)

    assert guard.pause(2.0, "rate_limit") == 2.0

    assert guard.admit() is None
    assert guard.hold() == Hold(PAUSED, 2.0)
    assert guard.retry_in() == 2.0
    assert guard.paused_by == "rate_limit"
    assert guard.state is BreakerState.CLOSED  # a pause is not a circuit state
    clock.now += 1.5
    assert guard.admit() is None
    assert guard.paused_for() == pytest.approx(0.5)
    clock.now += 0.5

    assert guard.hold() is None
    assert guard.admit() is not None


def test_a_longer_hint_extends_the_pause_and_a_shorter_one_never_shortens_it() -> None:
    clock = Clock()
    guard = breaker(clock)
    guard.pause(10.0, "rate_limit")
    clock.now += 1.0

    assert guard.pause(2.0, "server_error") == 0.0  # ends before the pause does: no change
    assert guard.paused_for() == pytest.approx(9.0)
    assert guard.paused_by == "rate_limit"
    assert guard.pause(20.0, "overloaded") == 20.0
    assert guard.paused_for() == 20.0
    assert guard.paused_by == "overloaded"


def test_a_hint_is_capped_like_a_retry_hint_and_an_empty_one_pauses_nothing() -> None:
    clock = Clock()
    guard = breaker(clock)

    for nothing in (0.0, -1.0, float("nan")):
        assert guard.pause(nothing, "rate_limit") == 0.0
    assert guard.hold() is None
    assert guard.pause(10 * MAX_HINT_SECONDS, "rate_limit") == MAX_HINT_SECONDS


def test_hints_close_together_report_one_pause_and_a_much_longer_one_another() -> None:
    clock = Clock()
    pauses: list[tuple[str, float, str]] = []
    guard = breaker(clock, on_pause=lambda *pause: pauses.append(pause))

    guard.pause(2.0, "rate_limit")
    clock.now += 0.01
    guard.pause(2.0, "rate_limit")  # a call that was in flight, rejected a moment later
    clock.now += 0.01
    guard.pause(30.0, "rate_limit")
    clock.now += 40.0
    guard.pause(1.0, "server_error")  # a new pause after the last one ended

    assert pauses == [
        ("openai", 2.0, "rate_limit"),
        ("openai", 30.0, "rate_limit"),
        ("openai", 1.0, "server_error"),
    ]


def test_the_hold_names_the_longer_of_the_pause_and_the_open_circuit() -> None:
    clock = Clock()
    guard = breaker(clock, failures=1, cooldown=10.0)
    call = guard.admit()
    assert call is not None
    call.failed("rate_limit")  # the circuit opens for 10 s
    guard.pause(3.0, "rate_limit")

    assert guard.hold() == Hold(CIRCUIT_OPEN, 10.0)
    guard.pause(15.0, "rate_limit")
    assert guard.hold() == Hold(PAUSED, 15.0)


def test_a_pause_holds_back_the_probe_of_a_half_open_circuit() -> None:
    clock = Clock()
    guard = breaker(clock, failures=1, cooldown=10.0)
    call = guard.admit()
    assert call is not None
    call.failed("rate_limit")
    clock.now += 10.0  # the cooldown is over...
    guard.pause(5.0, "rate_limit")  # ...but the provider asked for more

    assert guard.state is BreakerState.HALF_OPEN
    assert guard.admit() is None
    clock.now += 5.0
    probe = guard.admit()
    assert probe is not None
    assert probe.probe


def test_a_pause_applies_with_the_breaker_turned_off() -> None:
    guard = breaker(Clock(), failures=0)
    guard.pause(1.0, "rate_limit")

    assert guard.admit() is None


def test_the_guards_pass_pauses_to_their_listener() -> None:
    clock = Clock()
    pauses: list[tuple[str, float, str]] = []
    guards = ProviderGuards(clock=clock, on_pause=lambda *pause: pauses.append(pause))

    guards["gemini"].breaker.pause(4.0, "rate_limit")

    assert pauses == [("gemini", 4.0, "rate_limit")]
    assert guards["gemini"].breaker.retry_in() == 4.0
    assert guards["openai"].breaker.retry_in() == 0.0  # one pause per provider


def test_tasks_held_back_by_a_pause_are_requeued_with_their_reason_in_metrics() -> None:
    metrics = WorkerMetrics()
    metrics.deferred("openai", 1.2, PAUSED)
    metrics.deferred("openai", 3.4, CIRCUIT_OPEN)
    metrics.provider_paused("openai", 1.0, "rate_limit")  # the pause itself, not a requeue

    text = generate_latest(metrics.registry).decode()

    assert 'orchestrator_worker_tasks_requeued_total{reason="paused"} 1.0' in text
    assert 'orchestrator_worker_tasks_requeued_total{reason="circuit_open"} 1.0' in text


# -- real workers, a fake LLM over HTTP ---------------------------------------------------


async def test_a_rate_limit_pauses_the_provider_for_the_other_tasks_of_the_worker(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.script(Reply.error(429, headers={"Retry-After": "1"}))  # then: answers
    hooks = RecordingHooks()
    first = await submit(broker, "first", model=MINI)
    await start(hooks=hooks, concurrency=10, **FAST_RETRIES)
    await wait_for(lambda: hooks.pauses)
    others = [await submit(broker, f"task {i}", model=MINI) for i in range(3)]
    await wait_for(lambda: len(hooks.deferrals) >= 3 or fake.count_of("openai") > 1)

    assert fake.count_of("openai") == 1  # the others were held back, untried
    assert {(provider, reason) for provider, _, reason in hooks.deferrals} == {("openai", PAUSED)}

    events = await collect(broker, 4)

    for task in (first, *others):
        assert events[task.task_id][-1].kind == OK
        assert events[task.task_id][-1].text == task.messages[-1].content
    rejected, *later = fake.times_of("openai")
    assert len(later) == 4
    assert min(later) - rejected >= 0.95  # the pause (a lower bound only)
    assert [(provider, error) for provider, _, error in hooks.pauses] == [("openai", "rate_limit")]
    assert hooks.breaker == []  # the circuit had nothing to do with it


async def test_a_paused_provider_sends_an_alias_to_its_fallback_at_once(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    def reply(request: RecordedRequest) -> Reply:
        if request.api == "openai":
            return Reply.error(429, headers={"Retry-After": "30"})
        return Reply.answer("from", " gemini")

    fake.respond_with(reply)
    hooks = RecordingHooks()
    await start(hooks=hooks, concurrency=1, model_aliases=FAST)
    tasks = [await submit(broker, model="fast") for _ in range(4)]

    events = await collect(broker, 4)

    for task in tasks:
        assert [(e.kind, e.attempt, e.provider) for e in events[task.task_id]] == [
            (OK, 1, "gemini")
        ]
    assert (fake.count_of("openai"), fake.count_of("gemini")) == (1, 4)
    assert [reason for *_, reason in hooks.fallbacks] == ["rate_limit"] + [PAUSED] * 3
    assert hooks.deferrals == []
    assert hooks.retries == []


async def test_a_shorter_later_hint_does_not_shorten_the_pause(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    # Two calls in flight together: one is told 3 s, the other, answered later, 0.1 s.
    fake.script(
        Reply.error(429, headers={"Retry-After": "3"}, delay=0.3),
        Reply.error(429, headers={"Retry-After": "0.1"}, delay=0.6),
    )
    hooks = RecordingHooks()
    await submit(broker, "a", model=MINI)
    await submit(broker, "b", model=MINI)
    running = await start(hooks=hooks, concurrency=10, **FAST_RETRIES)
    # The task told 0.1 s comes back long before the 3 s are over: it must not call.
    await wait_for(lambda: hooks.deferrals or fake.count_of("openai") > 2)

    assert fake.count_of("openai") == 2
    assert [error for _, error, _, _ in hooks.retries] == ["rate_limit", "rate_limit"]
    ((provider, delay, reason),) = hooks.deferrals
    assert (provider, reason) == ("openai", PAUSED)
    assert delay > 1.0  # the rest of the 3 s pause, not of the 0.1 s one
    assert running.worker.guards["openai"].breaker.paused_for() > 1.0
    assert [(p, seconds) for p, seconds, _ in hooks.pauses] == [("openai", pytest.approx(3.0))]


async def test_without_a_submission_time_the_waits_of_a_paused_task_count_as_attempts(
    broker: MemoryBroker, start, fake: TimedFakeLLM
) -> None:
    fake.script(Reply.error(429, headers={"Retry-After": "30"}))
    hooks = RecordingHooks()
    first = await submit(broker, "first", model=MINI)
    await start(hooks=hooks, max_attempts=1)
    await wait_for(lambda: hooks.pauses)
    second = await submit(broker, "second", model=MINI)

    events = await collect(broker, 2)

    assert fake.count_of("openai") == 1
    for task in (first, second):
        (failed,) = events[task.task_id]
        assert failed.kind == FAIL
        assert failed.error is not None
        assert failed.error.type == "rate_limit"
        assert "gave up after 1 attempt" in failed.error.message
    error = events[second.task_id][0].error
    assert error is not None
    assert "asked to wait" in error.message
    await wait_for(lambda: settled(broker))
    assert [kind for _, kind in hooks.dead] == ["rate_limit", "rate_limit"]
    assert len(await broker.dead_letters(TASKS)) == 2


@pytest.mark.parametrize(
    "refusal",
    [
        Reply.error(429, code="rate_limit_exceeded"),  # no hint: only that task backs off
        Reply.error(429, code="insufficient_quota", headers={"Retry-After": "30"}),  # final
        # Every OpenAI answer carries reset headers: on a 500 they say nothing of the next call.
        Reply.error(500, headers={"x-ratelimit-reset-tokens": "2s"}),
    ],
    ids=["rate-limit-without-hint", "quota-exceeded-with-hint", "server-error-with-reset"],
)
async def test_a_failure_without_a_hint_or_not_retryable_pauses_nothing(
    broker: MemoryBroker, start, fake: TimedFakeLLM, refusal: Reply
) -> None:
    fake.script(refusal)
    hooks = RecordingHooks()
    first = await submit(broker, "first", model=MINI)
    running = await start(hooks=hooks, concurrency=10, **FAST_RETRIES)
    guard = running.worker.guards["openai"]
    # The refused call is over (its task may be calling again already: no hint, no pause).
    await wait_for(lambda: fake.count_of("openai") >= 1 and guard.in_flight == 0)
    second = await submit(broker, "second", model=MINI)

    events = await collect(broker, 2)

    assert events[second.task_id][-1].kind == OK
    assert events[second.task_id][-1].attempt == 1  # not held back
    assert events[first.task_id][-1].kind in (OK, FAIL)
    assert hooks.pauses == []
    assert hooks.deferrals == []


async def test_calls_rejected_together_pause_the_provider_once_with_one_log_line(
    broker: MemoryBroker, start, fake: TimedFakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOG)
    fake.script(*[Reply.error(429, headers={"Retry-After": "1"}, delay=0.2)] * 3)
    hooks = RecordingHooks()
    for index in range(3):
        await submit(broker, f"task {index}", model=MINI)
    await start(hooks=hooks, concurrency=10, **FAST_RETRIES)

    await wait_for(lambda: len(hooks.retries) == 3)

    # All three were in flight when the first answer paused the provider: none was cut.
    assert fake.count_of("openai") == 3
    assert [error for _, error, _, _ in hooks.retries] == ["rate_limit"] * 3
    assert len(hooks.pauses) == 1
    lines = [
        record
        for record in caplog.records
        if record.name == BREAKER_LOG and "asked to wait" in record.getMessage()
    ]
    assert [record.levelno for record in lines] == [logging.INFO]
    assert "openai" in lines[0].getMessage()


# -- traces -------------------------------------------------------------------------------


def events_named(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(event.attributes or {}) for event in span.events if event.name == name]


async def test_the_pause_and_the_tasks_it_holds_back_are_span_events(
    spans: tuple[TracerProvider, InMemorySpanExporter], fake: TimedFakeLLM
) -> None:
    tracer_provider, exporter = spans
    memory = MemoryBroker()
    traced = TracingBroker(memory, tracer_provider=tracer_provider)
    await memory.ensure_group(RESULTS, "test")
    fake.script(Reply.error(429, headers={"Retry-After": "5"}))
    providers = llm_registry(fake)
    hooks = RecordingHooks()
    worker = Worker(
        traced,
        settings(),
        providers=providers,
        delivery_context=process_context,
        hooks=hooks,
    )
    running = asyncio.create_task(worker.run())

    def processed() -> list[ReadableSpan]:
        finished = exporter.get_finished_spans()
        return [span for span in finished if span.name == f"process {TASKS}"]

    try:
        await submit(memory, "first", model=MINI)
        await wait_for(lambda: hooks.pauses)
        await submit(memory, "second", model=MINI)
        await wait_for(lambda: len(processed()) == 2)
    finally:
        worker.stop(force=True)
        async with asyncio.timeout(15):
            await running
        await providers.close()
        await memory.close()

    first, second = sorted(processed(), key=lambda span: span.start_time or 0)
    (paused,) = events_named(first, "orchestrator.paused")
    assert paused["orchestrator.provider"] == "openai"
    assert paused["error.type"] == "rate_limit"
    assert paused["orchestrator.pause.seconds"] == pytest.approx(5.0)
    (deferred,) = events_named(second, "orchestrator.deferred")
    assert deferred["orchestrator.retry.reason"] == PAUSED
    assert deferred["orchestrator.provider"] == "openai"
    remaining = deferred["orchestrator.pause.remaining"]
    assert isinstance(remaining, float)
    assert 0 < remaining <= 5.0
    assert deferred["orchestrator.retry.delay"] >= remaining
    assert fake.count_of("openai") == 1
