"""The pieces of fault handling on their own: the fault policy (outcome to decision, as a
table), backoff, circuit breaker, aliases, prices, provider limits, and their settings
(errors name the variable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator_broker import MemoryBroker
from orchestrator_tasks.messages import ErrorInfo, Usage
from orchestrator_worker import ConfigError, Worker, WorkerSettings
from orchestrator_worker.breaker import CIRCUIT_OPEN, PAUSED, BreakerState, CircuitBreaker
from orchestrator_worker.fault_policy import (
    ANSWERED,
    CRASHED,
    Action,
    Blocked,
    BrokerRefused,
    Cancelled,
    Crashed,
    Deadline,
    Decision,
    Expired,
    Failed,
    Invalid,
    Outcome,
    Overdelivered,
    Refused,
    call_crashed,
    decide,
    from_provider_error,
    pauses_provider,
    timed_out,
)
from orchestrator_worker.limits import ProviderGuards, parse_concurrency
from orchestrator_worker.pricing import Price, PriceTable, load_prices_file, parse_prices
from orchestrator_worker.providers import (
    AuthenticationFailed,
    ContentFiltered,
    EchoProvider,
    InvalidModel,
    InvalidRequest,
    MalformedResponse,
    Overloaded,
    ProviderError,
    ProviderRegistry,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from orchestrator_worker.retry import MAX_HINT_SECONDS, RetryPolicy
from orchestrator_worker.routing import ModelRouter, parse_aliases
from tests.worker import support
from tests.worker.support import FakeProvider

# -- fault policy: outcome -> decision ---------------------------------------------------


def top(_: float, high: float) -> float:
    """A 'random' source that always picks the top of the range."""
    return high


#: Three attempts, windows of 1, 2, 4 s, the top of each picked: decisions are exact.
POLICY = RetryPolicy(max_attempts=3, base=1.0, cap=60.0, uniform=top)
ACK, RETRY, DEFER, DEAD = Action.ACK, Action.RETRY, Action.DEFER, Action.DEAD_LETTER
AUTH = ErrorInfo(type="authentication", message="invalid API key")
E500 = ErrorInfo(type="server_error", message="HTTP 500")
LONG = "x" * 400


def exhausted(attempt: int, error: ErrorInfo) -> Decision:
    """``failed`` with ``error``, then dead-lettered with the reason."""
    reason = f"attempts exhausted ({attempt}): {error.type}: {error.message}"
    return Decision(DEAD, error=error, reason=reason)


@pytest.mark.parametrize(
    ("outcome", "attempt", "expected"),
    [
        pytest.param(ANSWERED, 1, Decision(ACK), id="answered"),
        pytest.param(ANSWERED, 3, Decision(ACK), id="answered-on-the-last-attempt"),
        pytest.param(Refused(AUTH), 1, Decision(ACK, error=AUTH), id="refused"),
        pytest.param(Refused(AUTH), 3, Decision(ACK, error=AUTH), id="refused-never-dead-letters"),
        pytest.param(Failed("openai", E500), 1, Decision(RETRY, 1.0), id="failed-backs-off"),
        pytest.param(Failed("openai", E500), 2, Decision(RETRY, 2.0), id="failed-window-doubles"),
        pytest.param(
            Failed("openai", E500, retry_after=5.0), 1, Decision(RETRY, 6.0), id="retry-after"
        ),
        pytest.param(
            Failed("openai", E500, harder=True), 1, Decision(RETRY, 2.0), id="overloaded-harder"
        ),
        pytest.param(
            Failed("openai", E500),
            3,
            exhausted(
                3, ErrorInfo("server_error", "gave up after 3 attempt(s); the last one: HTTP 500")
            ),
            id="failed-on-the-last-attempt",
        ),
        pytest.param(
            Failed("openai", E500, retry_after=5.0),
            4,
            exhausted(
                4, ErrorInfo("server_error", "gave up after 4 attempt(s); the last one: HTTP 500")
            ),
            id="failed-past-the-last-attempt",
        ),
        pytest.param(
            Blocked("openai", CIRCUIT_OPEN, 8.0, "server_error"),
            1,
            Decision(RETRY, 10.0),
            id="no-deadline-circuit-open-waits-as-an-attempt",
        ),
        pytest.param(
            Blocked("openai", PAUSED, 4.0, "rate_limit"),
            2,
            Decision(RETRY, 5.0),
            id="no-deadline-paused",
        ),
        pytest.param(
            Blocked("openai", PAUSED, 0.0),
            1,
            Decision(RETRY, 0.0625),
            id="no-deadline-never-a-hot-loop",
        ),
        pytest.param(
            Blocked("openai", CIRCUIT_OPEN, 8.0, "server_error"),
            3,
            exhausted(
                3,
                ErrorInfo(
                    "server_error",
                    "gave up after 3 attempt(s): provider openai keeps failing (server_error) "
                    "and its circuit is open",
                ),
            ),
            id="circuit-open-on-the-last-attempt",
        ),
        pytest.param(
            Blocked("openai", CIRCUIT_OPEN, 8.0),
            3,
            exhausted(
                3,
                ErrorInfo(
                    "unavailable",
                    "gave up after 3 attempt(s): provider openai keeps failing (unavailable) "
                    "and its circuit is open",
                ),
            ),
            id="circuit-open-for-no-known-error",
        ),
        pytest.param(
            Blocked("gemini", PAUSED, 12.25, "overloaded"),
            3,
            exhausted(
                3,
                ErrorInfo(
                    "overloaded",
                    "gave up after 3 attempt(s): provider gemini asked to wait (overloaded) "
                    "and is paused for 12.2 s more",
                ),
            ),
            id="paused-on-the-last-attempt",
        ),
        pytest.param(
            Blocked("gemini", PAUSED, 1.0),
            3,
            exhausted(
                3,
                ErrorInfo(
                    "rate_limit",
                    "gave up after 3 attempt(s): provider gemini asked to wait (rate_limit) "
                    "and is paused for 1.0 s more",
                ),
            ),
            id="paused-for-no-known-error",
        ),
        pytest.param(
            Invalid("prompt is missing or not a string"),
            1,
            Decision(
                DEAD,
                error=ErrorInfo("invalid_task", "invalid task: prompt is missing or not a string"),
                reason="invalid task: prompt is missing or not a string",
            ),
            id="invalid",
        ),
        pytest.param(
            Invalid(LONG),
            1,
            Decision(
                DEAD,
                error=ErrorInfo("invalid_task", ("invalid task: " + LONG)[:300]),
                reason=("invalid task: " + LONG)[:300],
            ),
            id="invalid-reason-cut",
        ),
        pytest.param(
            Overdelivered(),
            4,
            exhausted(
                4,
                ErrorInfo(
                    "attempts_exhausted",
                    "gave up after 3 attempt(s): the task was delivered 4 times and earlier "
                    "attempts ended without a result (worker crash, lost lease or shutdown)",
                ),
            ),
            id="overdelivered",
        ),
        pytest.param(BrokerRefused(), 1, Decision(RETRY, 1.0), id="broker-refused"),
        pytest.param(BrokerRefused(), 3, Decision(RETRY, 1.0), id="broker-refused-last"),
        pytest.param(
            Crashed(), 1, Decision(ACK, error=ErrorInfo("internal", CRASHED)), id="crashed"
        ),
        pytest.param(Crashed(finished=True), 1, Decision(ACK), id="crashed-after-the-end"),
        pytest.param(Cancelled(), 1, Decision(RETRY, 0.0), id="cancelled"),
        pytest.param(Cancelled(finished=True), 1, Decision(ACK), id="cancelled-after-the-end"),
    ],
)
def test_the_fault_policy_decides(outcome: Outcome, attempt: int, expected: Decision) -> None:
    assert decide(outcome, attempt, POLICY) == expected


HOUR = Deadline(3600.0, 3000.0)
SOON = Deadline(900.0, 3.0)
GONE = Deadline(900.0, -0.5)


def expired(message: str) -> Decision:
    """``failed``/``deadline_exceeded`` with ``message``, then dead-lettered."""
    return Decision(
        DEAD,
        error=ErrorInfo("deadline_exceeded", message),
        reason=f"deadline exceeded: {message}",
    )


@pytest.mark.parametrize(
    ("outcome", "attempt", "deadline", "expected"),
    [
        pytest.param(
            Blocked("openai", CIRCUIT_OPEN, 8.0, "server_error"),
            1,
            HOUR,
            Decision(DEFER, 10.0),
            id="circuit-open-defers-for-the-cooldown-and-a-quarter",
        ),
        pytest.param(
            Blocked("openai", PAUSED, 4.0, "rate_limit"),
            3,
            HOUR,
            Decision(DEFER, 5.0),
            id="waiting-is-not-an-attempt-even-on-the-last-one",
        ),
        pytest.param(
            Blocked("openai", PAUSED, 0.0), 9, HOUR, Decision(DEFER, 0.0625), id="no-hot-loop"
        ),
        pytest.param(
            Blocked("openai", PAUSED, 2.0, "rate_limit"),
            1,
            Deadline(900.0, 2.4),
            Decision(DEFER, 2.2),
            id="jitter-only-into-the-time-left",
        ),
        pytest.param(
            Blocked("openai", PAUSED, 4.0, "rate_limit"),
            1,
            SOON,
            expired(
                "the task's deadline (900 s after submission) passes while provider openai "
                "is paused after a rate_limit for 4.0 s more"
            ),
            id="a-pause-past-the-deadline-fails-at-once",
        ),
        pytest.param(
            Blocked("openai", CIRCUIT_OPEN, 30.0),
            2,
            SOON,
            expired(
                "the task's deadline (900 s after submission) passes while the circuit of "
                "provider openai is open for 30.0 s more"
            ),
            id="an-open-circuit-past-the-deadline",
        ),
        pytest.param(
            Failed("openai", E500), 1, HOUR, Decision(RETRY, 1.0), id="failed-retries-in-time"
        ),
        pytest.param(
            Failed("openai", E500, retry_after=5.0),
            1,
            SOON,
            expired(
                "the task's deadline (900 s after submission) leaves no time for a retry in "
                "6.0 s; attempt 1 failed: server_error: HTTP 500"
            ),
            id="a-retry-past-the-deadline-fails-at-once",
        ),
        pytest.param(
            Failed("openai", E500),
            3,
            SOON,
            exhausted(
                3, ErrorInfo("server_error", "gave up after 3 attempt(s); the last one: HTTP 500")
            ),
            id="own-failures-say-so",
        ),
        pytest.param(
            Expired(),
            2,
            GONE,
            expired(
                "the task's deadline (900 s after submission) passed before attempt 2 could "
                "call a provider"
            ),
            id="expired-before-a-call",
        ),
        pytest.param(
            Expired("gemini"),
            1,
            GONE,
            expired(
                "the task's deadline (900 s after submission) passed during the call to gemini"
            ),
            id="expired-during-a-call",
        ),
    ],
)
def test_the_deadline_bounds_the_task(
    outcome: Outcome, attempt: int, deadline: Deadline, expected: Decision
) -> None:
    assert decide(outcome, attempt, POLICY, deadline) == expected


def test_an_expired_outcome_needs_its_deadline() -> None:
    with pytest.raises(ValueError, match="deadline"):
        decide(Expired(), 1, POLICY)


def test_a_dead_letter_reason_is_cut_to_300_characters() -> None:
    decision = decide(Failed("openai", ErrorInfo("server_error", LONG)), 3, POLICY)

    assert decision.action is DEAD
    assert decision.reason is not None
    assert len(decision.reason) == 300
    assert decision.error is not None
    assert decision.error.message.endswith(LONG)  # the client's message is whole


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (
            RateLimited("slow down", retry_after=2.0, status=429),
            Failed("p", ErrorInfo("rate_limit", "slow down"), retry_after=2.0),
        ),
        (
            Overloaded("busy", status=529),
            Failed("p", ErrorInfo("overloaded", "busy"), harder=True),
        ),
        (ServerError("HTTP 500", status=500), Failed("p", ErrorInfo("server_error", "HTTP 500"))),
        (ProviderUnavailable("down"), Failed("p", ErrorInfo("unavailable", "down"))),
        (ProviderTimeout("read"), Failed("p", ErrorInfo("timeout", "read"))),
        (StreamInterrupted("cut"), Failed("p", ErrorInfo("stream_interrupted", "cut"))),
        (MalformedResponse("?"), Failed("p", ErrorInfo("malformed_response", "?"))),
        (InvalidRequest("bad", status=400), Refused(ErrorInfo("invalid_request", "bad"))),
        (AuthenticationFailed("key", status=401), Refused(ErrorInfo("authentication", "key"))),
        (ContentFiltered("no"), Refused(ErrorInfo("content_filter", "no"))),
        (
            QuotaExceeded("paid", retry_after=60.0),
            Refused(ErrorInfo("quota_exceeded", "paid")),
        ),
        (InvalidModel("which?"), Refused(ErrorInfo("invalid_model", "which?"))),
        (ProviderError("unknown"), Refused(ErrorInfo("provider_error", "unknown"))),
    ],
    ids=lambda value: type(value).__name__,
)
def test_a_provider_error_is_an_outcome(error: ProviderError, outcome: Outcome) -> None:
    assert from_provider_error("p", error) == outcome


def test_a_timeout_and_a_crashed_call_are_outcomes() -> None:
    assert timed_out("openai", 30.0) == Failed(
        "openai", ErrorInfo("timeout", "no answer within 30 s")
    )
    assert call_crashed(KeyError("secret text")) == Refused(
        ErrorInfo("internal", f"{CRASHED} (KeyError)")  # the class, never the text
    )


@pytest.mark.parametrize(
    ("error", "pauses"),
    [
        (RateLimited("429", retry_after=2.0, status=429), True),
        (RateLimited("429", status=429), False),  # no wait named
        (Overloaded("529", retry_after=2.0, status=529), True),
        (ServerError("503", retry_after=2.0, status=503), True),
        (ProviderUnavailable("503", retry_after=2.0, status=503), True),
        (ServerError("500 with reset headers", retry_after=2.0, status=500), False),
        (StreamInterrupted("cut", retry_after=2.0), False),
        (QuotaExceeded("not retryable", retry_after=2.0, status=429), False),
    ],
    ids=lambda value: value.message if isinstance(value, ProviderError) else str(value),
)
def test_which_failures_pause_the_provider(error: ProviderError, pauses: bool) -> None:
    assert pauses_provider(error) is pauses


# -- backoff -------------------------------------------------------------------------


def test_the_backoff_window_doubles_per_attempt_up_to_the_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0, uniform=top)

    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.delay(500) == 10  # no overflow for absurd attempt numbers


def test_the_jitter_is_full_from_zero() -> None:
    seen: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        seen.append((low, high))
        return low

    RetryPolicy(base=0.5, cap=60.0, uniform=record).delay(3)

    assert seen == [(0.0, 2.0)]


def test_a_provider_hint_is_a_lower_bound_with_jitter_on_top() -> None:
    policy = RetryPolicy(base=1.0, cap=60.0, uniform=top)

    assert policy.delay(1, hint=2.0) == 3.0
    assert RetryPolicy(uniform=lambda low, high: low).delay(4, hint=2.0) == 2.0
    assert policy.delay(1, hint=10 * MAX_HINT_SECONDS) == MAX_HINT_SECONDS + 1


def test_overloaded_backs_off_one_step_further() -> None:
    policy = RetryPolicy(base=1.0, cap=60.0, uniform=top)

    assert policy.delay(2, harder=True) == 2 * policy.delay(2)


def test_the_last_attempt_is_exhausted() -> None:
    policy = RetryPolicy(max_attempts=3)

    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_a_deferral_waits_out_the_cooldown_plus_a_quarter_at_most() -> None:
    assert RetryPolicy(uniform=top).deferral(8.0) == 10.0
    assert RetryPolicy(uniform=lambda low, high: low).deferral(8.0) == 8.0
    assert RetryPolicy(uniform=lambda low, high: low).deferral(0.0) > 0  # never a hot loop


# -- circuit breaker -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        call = breaker.admit()
        assert call is not None
        call.failed("server_error")


def test_the_circuit_opens_after_the_failures_in_a_row() -> None:
    clock = Clock()
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        "openai",
        failures=3,
        cooldown=30,
        clock=clock,
        on_change=lambda _, old, new: changes.append((old, new)),
    )

    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)

    assert breaker.state is BreakerState.OPEN
    assert breaker.admit() is None
    assert breaker.retry_in() == 30
    assert breaker.last_error == "server_error"
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_a_success_or_a_refusal_resets_the_count() -> None:
    breaker = CircuitBreaker("openai", failures=3, cooldown=30, clock=Clock())
    fail(breaker, 2)
    call = breaker.admit()
    assert call is not None
    call.succeeded()
    fail(breaker, 2)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 2


def test_after_the_cooldown_one_probe_goes_and_its_success_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker("openai", failures=1, cooldown=30, clock=clock)
    fail(breaker)
    clock.now += 29
    assert breaker.admit() is None
    assert breaker.retry_in() == pytest.approx(1)
    clock.now += 1

    assert breaker.state is BreakerState.HALF_OPEN
    probe = breaker.admit()
    assert probe is not None
    assert breaker.admit() is None  # one probe at a time
    assert breaker.retry_in() == 30
    probe.succeeded()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.admit() is not None


def test_a_failed_probe_opens_the_circuit_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker("openai", failures=2, cooldown=10, clock=clock)
    fail(breaker, 2)
    clock.now += 10
    fail(breaker)  # the probe

    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == 10


def test_a_probe_without_verdict_lets_the_next_task_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker("openai", failures=1, cooldown=10, clock=clock)
    fail(breaker)
    clock.now += 10
    probe = breaker.admit()
    assert probe is not None
    probe.release()  # cancelled, say

    assert breaker.admit() is not None


def test_outcomes_of_calls_from_before_the_circuit_opened_do_not_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker("openai", failures=1, cooldown=10, clock=clock)
    old = breaker.admit()
    assert old is not None
    fail(breaker)
    old.succeeded()  # a long stream that began earlier

    assert breaker.state is BreakerState.OPEN


def test_a_breaker_of_zero_failures_never_opens() -> None:
    breaker = CircuitBreaker("openai", failures=0, cooldown=10, clock=Clock())
    fail(breaker, 100)

    assert breaker.state is BreakerState.CLOSED


# -- aliases ---------------------------------------------------------------------------


def test_aliases_parse_in_order() -> None:
    raw = " fast = openai/gpt-4o-mini | gemini/gemini-2.0-flash , smart=openai/gpt-4o,"

    assert parse_aliases("MODEL_ALIASES", raw) == {
        "fast": ("openai/gpt-4o-mini", "gemini/gemini-2.0-flash"),
        "smart": ("openai/gpt-4o",),
    }


@pytest.mark.parametrize(
    "raw",
    [
        "fast",
        "fa/st=openai/x",
        "fast=",
        "fast=openai/x|",
        "fast=openai/x,fast=gemini/y",
        "fast=openai/x|openai/x",
        "fast=open ai/x",
    ],
)
def test_a_malformed_alias_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_aliases("MODEL_ALIASES", raw)

    assert raised.value.variable == "MODEL_ALIASES"


def registry() -> ProviderRegistry:
    return ProviderRegistry([EchoProvider(), FakeProvider(name="openai")])


def test_an_alias_routes_to_its_targets_and_other_names_as_before() -> None:
    router = ModelRouter(registry(), {"fast": ("openai/mini", "echo")})

    assert [(r.provider.name, r.model) for r in router.routes("fast")] == [
        ("openai", "mini"),
        ("echo", "echo"),
    ]
    assert [(r.provider.name, r.model) for r in router.routes("openai/big")] == [("openai", "big")]
    assert [r.provider.name for r in router.routes(None)] == ["echo"]
    with pytest.raises(InvalidModel):
        router.routes("nonesuch/model")


def test_an_alias_skips_targets_that_cannot_take_the_parameters() -> None:
    providers = ProviderRegistry([FakeProvider(name="openai"), FakeProvider(name="gemini")])
    router = ModelRouter(providers, {"fast": ("openai/mini", "gemini/flash")})

    def names(parameters: dict[str, object]) -> list[str]:
        return [r.provider.name for r in router.routes("fast", parameters)]

    assert names({}) == ["openai", "gemini"]
    assert names({"temperature": 0.2}) == ["openai", "gemini"]
    assert names({"top_k": 5}) == ["gemini"]  # Gemini only
    assert names({"reasoning_effort": "low"}) == ["openai"]  # OpenAI only
    # None takes both: all stay, and the first refuses the task naming why.
    assert names({"top_k": 5, "reasoning_effort": "low"}) == ["openai", "gemini"]
    # A plain model is never filtered: its provider refuses what it cannot take.
    assert [r.provider.name for r in router.routes("openai/mini", {"top_k": 5})] == ["openai"]


def test_the_default_model_may_be_an_alias() -> None:
    providers = ProviderRegistry([EchoProvider()], default_model="fast")
    router = ModelRouter(providers, {"fast": ("echo",)})
    router.check()

    assert [r.provider.name for r in router.routes(None)] == ["echo"]


@pytest.mark.parametrize(
    ("aliases", "variable", "problem"),
    [
        ({"openai": ("echo",)}, "MODEL_ALIASES", "name of a provider"),
        ({"fast": ("gemini/flash",)}, "MODEL_ALIASES", "no provider serves"),
        ({"a": ("echo",), "b": ("a",)}, "MODEL_ALIASES", "is an alias"),
    ],
)
def test_aliases_that_do_not_fit_the_providers_stop_startup(
    aliases: dict[str, tuple[str, ...]], variable: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        ModelRouter(registry(), aliases).check()

    assert raised.value.variable == variable
    assert problem in str(raised.value)


# -- prices --------------------------------------------------------------------------


def test_prices_parse_and_price_by_model_then_provider() -> None:
    table = PriceTable(parse_prices("MODEL_PRICES", "openai/mini=0.15:0.60, openai=1:2, echo=0:0"))

    assert table.cost("openai", "mini", Usage(1_000_000, 1_000_000)) == pytest.approx(0.75)
    assert table.cost("openai", "other", Usage(500_000, 0)) == pytest.approx(0.5)
    assert table.cost("echo", "echo", Usage(10, 10)) == 0
    assert table.cost("gemini", "flash", Usage(10, 10)) is None
    assert table.cost("openai", "mini", None) is None


@pytest.mark.parametrize("raw", ["mini", "mini=1", "mini=a:b", "mini=-1:1", "a=1:1,a=2:2", "=1:1"])
def test_a_malformed_price_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_prices("MODEL_PRICES", raw)

    assert raised.value.variable == "MODEL_PRICES"


def test_a_price_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai/mini": {"input": 0.15, "output": 0.6}}))

    assert load_prices_file("MODEL_PRICES_FILE", str(path)) == {"openai/mini": Price(0.15, 0.6)}


@pytest.mark.parametrize(
    "content", [None, "not json", "[1, 2]", '{"m": [1, 2]}', '{"m": {"input": 1}}']
)
def test_a_bad_price_file_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "prices.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ConfigError) as raised:
        load_prices_file("MODEL_PRICES_FILE", str(path))

    assert raised.value.variable == "MODEL_PRICES_FILE"


# -- provider limits -----------------------------------------------------------------


def test_provider_limits_parse() -> None:
    assert parse_concurrency("PROVIDER_CONCURRENCY", "openai=50, gemini=20") == {
        "openai": 50,
        "gemini": 20,
    }


@pytest.mark.parametrize("raw", ["openai", "openai=0", "openai=x", "openai=1,openai=2", "=3"])
def test_a_malformed_provider_limit_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_concurrency("PROVIDER_CONCURRENCY", raw)

    assert raised.value.variable == "PROVIDER_CONCURRENCY"


def test_a_limit_for_an_unknown_provider_stops_startup() -> None:
    with pytest.raises(ConfigError) as raised:
        ProviderGuards(concurrency={"opnai": 5}).check(["echo", "openai"])

    assert raised.value.variable == "PROVIDER_CONCURRENCY"


# -- settings ------------------------------------------------------------------------


def test_the_fault_settings_have_their_defaults() -> None:
    settings = WorkerSettings.from_env({})

    assert (settings.max_attempts, settings.max_deliveries) == (5, 6)
    assert (settings.retry_base, settings.retry_max) == (1.0, 60.0)
    assert (settings.breaker_failures, settings.breaker_cooldown) == (5, 30.0)
    assert settings.model_aliases == {}
    assert settings.provider_concurrency == {}
    assert settings.model_prices == {}


def test_every_fault_setting_is_read(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps({"openai/a": {"input": 1, "output": 2}, "echo": {"input": 0, "output": 0}})
    )
    settings = WorkerSettings.from_env(
        {
            "MAX_ATTEMPTS": "7",
            "RETRY_BASE_SECONDS": "0.5",
            "RETRY_MAX_SECONDS": "20",
            "MODEL_ALIASES": "fast=openai/a|gemini/b",
            "PROVIDER_CONCURRENCY": "openai=50,gemini=20",
            "BREAKER_FAILURES": "0",
            "BREAKER_COOLDOWN_SECONDS": "12.5",
            "MODEL_PRICES": "openai/a=3:4",
            "MODEL_PRICES_FILE": str(prices),
        }
    )

    assert (settings.max_attempts, settings.max_deliveries) == (7, 8)
    assert (settings.retry_base, settings.retry_max) == (0.5, 20.0)
    assert settings.model_aliases == {"fast": ("openai/a", "gemini/b")}
    assert settings.provider_concurrency == {"openai": 50, "gemini": 20}
    assert (settings.breaker_failures, settings.breaker_cooldown) == (0, 12.5)
    # MODEL_PRICES wins over the file
    assert settings.model_prices == {"openai/a": Price(3, 4), "echo": Price(0, 0)}
    policy = settings.retry_policy
    assert (policy.max_attempts, policy.base, policy.cap) == (7, 0.5, 20.0)


def test_the_deadline_defaults_to_three_task_timeouts_and_is_read() -> None:
    assert WorkerSettings.from_env({}).deadline_seconds == 900.0
    assert WorkerSettings.from_env({"TASK_TIMEOUT_SECONDS": "20"}).deadline_seconds == 60.0
    read = WorkerSettings.from_env({"TASK_TIMEOUT_SECONDS": "20", "TASK_DEADLINE_SECONDS": "7.5"})
    assert read.deadline_seconds == 7.5


def test_max_deliveries_alone_leaves_the_worker_one_delivery() -> None:
    assert WorkerSettings.from_env({"MAX_DELIVERIES": "3"}).max_attempts == 2
    assert WorkerSettings.from_env({"MAX_DELIVERIES": "10"}).max_attempts == 5


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
        ({"MAX_ATTEMPTS": "5", "MAX_DELIVERIES": "5"}, "MAX_ATTEMPTS"),
        ({"MAX_DELIVERIES": "1"}, "MAX_DELIVERIES"),
        ({"RETRY_BASE_SECONDS": "-1"}, "RETRY_BASE_SECONDS"),
        ({"RETRY_MAX_SECONDS": "soon"}, "RETRY_MAX_SECONDS"),
        ({"RETRY_BASE_SECONDS": "10", "RETRY_MAX_SECONDS": "5"}, "RETRY_MAX_SECONDS"),
        ({"MODEL_ALIASES": "fast"}, "MODEL_ALIASES"),
        ({"PROVIDER_CONCURRENCY": "openai=-1"}, "PROVIDER_CONCURRENCY"),
        ({"BREAKER_FAILURES": "many"}, "BREAKER_FAILURES"),
        ({"BREAKER_COOLDOWN_SECONDS": "0"}, "BREAKER_COOLDOWN_SECONDS"),
        ({"TASK_DEADLINE_SECONDS": "0"}, "TASK_DEADLINE_SECONDS"),
        ({"TASK_DEADLINE_SECONDS": "an hour"}, "TASK_DEADLINE_SECONDS"),
        ({"MODEL_PRICES": "a=1"}, "MODEL_PRICES"),
        ({"MODEL_PRICES_FILE": "/nonexistent/prices.json"}, "MODEL_PRICES_FILE"),
    ],
)
def test_a_malformed_fault_setting_names_its_variable(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        WorkerSettings.from_env(environ)

    assert raised.value.variable == variable


def test_the_docstring_documents_every_fault_setting() -> None:
    doc = WorkerSettings.__doc__ or ""
    for variable in (
        "MAX_ATTEMPTS", "MAX_DELIVERIES", "RETRY_BASE_SECONDS", "RETRY_MAX_SECONDS",
        "MODEL_ALIASES", "PROVIDER_CONCURRENCY", "BREAKER_FAILURES",
        "BREAKER_COOLDOWN_SECONDS", "MODEL_PRICES", "MODEL_PRICES_FILE",
        "TASK_DEADLINE_SECONDS",
    ):  # fmt: skip
        assert f"``{variable}``" in doc


def test_a_worker_refuses_aliases_and_limits_its_providers_cannot_serve() -> None:
    for overrides, variable in (
        ({"model_aliases": {"fast": ("nonesuch/model",)}}, "MODEL_ALIASES"),
        ({"provider_concurrency": {"nonesuch": 3}}, "PROVIDER_CONCURRENCY"),
        ({"max_attempts": 6, "max_deliveries": 6}, "MAX_ATTEMPTS"),
    ):
        with pytest.raises(ConfigError) as raised:
            Worker(MemoryBroker(), support.settings(**overrides))
        assert raised.value.variable == variable
