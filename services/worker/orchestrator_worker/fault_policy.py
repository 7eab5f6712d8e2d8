"""How a delivery is settled, given how its attempt ended: the worker's fault policy.

Pure: no I/O, no clock, no event loop. ``decide(outcome, attempt, retry)`` maps what happened
to one ``Decision``; the runner (``runner``) makes the calls, publishes the events and
settles the delivery as told. The outcomes, and their decisions:

============================  ============================================================
outcome                       decision
============================  ============================================================
``Answered``                  ``ACK`` (``succeeded`` is out)
``Refused`` (an error no      ``ACK`` after ``failed`` with its error: a non-retryable
retry mends)                  ``ProviderError`` (400, 401/403, 404, content filter,
                              quota), an unknown model, a provider call that crashed
``Failed`` (retryable: rate   ``RETRY`` after ``RetryPolicy.delay`` (backoff, full jitter,
limit, 5xx, overload, cut     at least the provider's ``Retry-After``; an overload backs
stream, malformed answer,     off one step further); on the last attempt ``DEAD_LETTER``
timeout)                      after ``failed`` with its type, saying the attempts ran out
``Blocked`` (every target's   ``DEFER`` (an uncounted hand-back, ``defer(delay)``) for
circuit open or provider      ``RetryPolicy.deferral`` of the hold: waiting is not an
paused)                       attempt. With no deadline known (a payload without
                              ``submitted_at``), ``RETRY`` instead, so that ``MAX_ATTEMPTS``
                              bounds the waits, and on the last attempt ``DEAD_LETTER``
``Expired`` (the deadline     ``DEAD_LETTER`` after ``failed``/``deadline_exceeded``
passed before or during a
call)
``Invalid`` (the payload is   ``DEAD_LETTER`` with the reason (and ``failed``/
not a task)                   ``invalid_task``, which the runner can publish only when the
                              payload named a task id and tenant)
``Overdelivered`` (delivered  ``DEAD_LETTER`` after ``failed``/``attempts_exhausted``; no
past ``MAX_ATTEMPTS``)        provider is called
``BrokerRefused`` (an event   ``RETRY`` after ``REPUBLISH_DELAY``
could not be published)
``Crashed`` (a bug outside    ``ACK`` after ``failed``/``internal`` (message naming no
the provider call)            details), or a plain ``ACK`` if a terminal event is out
``Aborted`` (its client       ``ACK``, after the runner published ``cancelled``
cancelled the task)
``Cancelled`` (shutdown past  ``RETRY`` at once (``nack(0)``), or ``ACK`` if a terminal
the grace period)             event is out
============================  ============================================================

A ``RETRY`` is a ``nack(delay)``, which raises the delivery count, the attempt number;
a ``DEFER`` is a ``defer(delay)``, which does not. So a task fails either from its own
calls' failures (``MAX_ATTEMPTS`` of them, the last one's error type) or from its deadline
(``TASK_DEADLINE_SECONDS`` after submission, ``deadline_exceeded``), and its error says
which. The deadline (``Deadline``) bounds the whole task: a retry or a deferral that would
end past it fails the task at once instead, and each call is cut short at it.
"""

from __future__ import annotations

import enum

import attrs

from orchestrator_tasks import ErrorInfo

from .breaker import PAUSED
from .providers.errors import Overloaded, ProviderError, RateLimited
from .retry import RetryPolicy

__all__ = [
    "ANSWERED",
    "CRASHED",
    "DEADLINE_EXCEEDED",
    "MAX_REASON",
    "REPUBLISH_DELAY",
    "Aborted",
    "Action",
    "Answered",
    "Blocked",
    "BrokerRefused",
    "Cancelled",
    "Crashed",
    "Deadline",
    "Decision",
    "Expired",
    "Failed",
    "Invalid",
    "Outcome",
    "Overdelivered",
    "Refused",
    "call_crashed",
    "decide",
    "from_provider_error",
    "pauses_provider",
    "timed_out",
]

#: How long a broken publish waits before the task runs again.
REPUBLISH_DELAY = 1.0
#: What clients see for a failure we did not foresee (details go to the log only).
CRASHED = "the worker failed unexpectedly"
#: Longest reason or message copied from a payload into a dead letter or event.
MAX_REASON = 300


# -- outcomes ----------------------------------------------------------------------------


@attrs.frozen
class Answered:
    """A target answered; its ``succeeded`` event is out."""


#: The one ``Answered`` (it carries nothing; this runs for every task).
ANSWERED = Answered()


@attrs.frozen
class Refused:
    """A target failed in a way that no retry mends (or the model is unknown)."""

    error: ErrorInfo


@attrs.frozen
class Failed:
    """The last target tried failed retryably (``harder``: back off one step more)."""

    provider: str
    error: ErrorInfo
    retry_after: float | None = None
    harder: bool = False


@attrs.frozen
class Blocked:
    """No target was called: the first to take calls again is ``provider``, held for
    ``seconds`` more for ``reason`` (``breaker.PAUSED`` or ``breaker.CIRCUIT_OPEN``);
    ``cause`` is the error type that paused it or tripped its circuit, when known."""

    provider: str
    reason: str
    seconds: float
    cause: str | None = None

    @property
    def paused(self) -> bool:
        return self.reason == PAUSED


@attrs.frozen
class Expired:
    """The task's deadline passed: before this attempt could call anyone, or during the
    call to ``provider`` (which was cut short)."""

    provider: str | None = None


@attrs.frozen
class Invalid:
    """The payload is not a task."""

    reason: str


@attrs.frozen
class Overdelivered:
    """Delivered past ``MAX_ATTEMPTS``: earlier attempts ended without a result (worker
    crash, lost lease or shutdown)."""


@attrs.frozen
class BrokerRefused:
    """The broker refused one of the attempt's events: the attempt is abandoned."""


@attrs.frozen
class Crashed:
    """A bug outside the provider call; ``finished``: a terminal event is out already."""

    finished: bool = False


@attrs.frozen
class Aborted:
    """The task's client cancelled it: ``cancelled`` is out (or about to be)."""


@attrs.frozen
class Cancelled:
    """The handler was cancelled (shutdown); ``finished``: a terminal event is out."""

    finished: bool = False


Outcome = (
    Answered
    | Refused
    | Failed
    | Blocked
    | Expired
    | Invalid
    | Overdelivered
    | BrokerRefused
    | Crashed
    | Aborted
    | Cancelled
)


# -- decisions ---------------------------------------------------------------------------


class Action(enum.Enum):
    ACK = "ack"
    #: Hand back (``nack(delay)``) to run again as the next attempt.
    RETRY = "retry"
    #: Hand back untried (``nack(delay)``) until a target takes calls again.
    DEFER = "defer"
    DEAD_LETTER = "dead_letter"


@attrs.frozen
class Decision:
    """How to settle: ``action``; after ``delay`` seconds (``RETRY``, ``DEFER``); with the
    ``failed`` event ``error`` published first (None: none); ``reason`` for a dead letter."""

    action: Action
    delay: float = 0.0
    error: ErrorInfo | None = None
    reason: str | None = None


@attrs.frozen
class Deadline:
    """A task's deadline: ``seconds`` after its submission in all (``TASK_DEADLINE_SECONDS``),
    ``remaining`` of them left now."""

    seconds: float
    remaining: float

    @property
    def passed(self) -> bool:
        return self.remaining <= 0


#: The error type of a task that ran out of time rather than of attempts.
DEADLINE_EXCEEDED = "deadline_exceeded"

_ACK = Decision(Action.ACK)


def decide(
    outcome: Outcome, attempt: int, retry: RetryPolicy, deadline: Deadline | None = None
) -> Decision:
    """The decision for ``outcome`` of attempt ``attempt`` (the delivery count), with the
    task's ``deadline`` (None: the task carries no submission time, so none is known)."""
    if isinstance(outcome, Answered):
        return _ACK
    if isinstance(outcome, Refused):
        return Decision(Action.ACK, error=outcome.error)
    if isinstance(outcome, Failed):
        if retry.exhausted(attempt):
            message = f"gave up after {attempt} attempt(s); the last one: {outcome.error.message}"
            return _give_up(attempt, ErrorInfo(type=outcome.error.type, message=message))
        delay = retry.delay(attempt, hint=outcome.retry_after, harder=outcome.harder)
        if deadline is not None and delay >= deadline.remaining:
            error = outcome.error
            return _expire(
                deadline,
                f"leaves no time for a retry in {delay:.1f} s; attempt {attempt} failed: "
                f"{error.type}: {error.message}",
            )
        return Decision(Action.RETRY, delay)
    if isinstance(outcome, Blocked):
        if deadline is None:
            # Nothing else would bound the waits: they count as attempts.
            if retry.exhausted(attempt):
                return _give_up(attempt, _blocked_error(outcome, attempt))
            return Decision(Action.RETRY, retry.deferral(outcome.seconds))
        if outcome.seconds >= deadline.remaining:
            return _expire(deadline, f"passes while {_holding(outcome)}")
        # Jitter only into the time left, so that the task comes back before its deadline.
        room = outcome.seconds + (deadline.remaining - outcome.seconds) / 2
        return Decision(Action.DEFER, min(retry.deferral(outcome.seconds), room))
    if isinstance(outcome, Expired):
        if deadline is None:
            raise ValueError("an Expired outcome needs the deadline")
        if outcome.provider is None:
            return _expire(deadline, f"passed before attempt {attempt} could call a provider")
        return _expire(deadline, f"passed during the call to {outcome.provider}")
    if isinstance(outcome, Invalid):
        reason = f"invalid task: {outcome.reason}"[:MAX_REASON]
        return Decision(
            Action.DEAD_LETTER, error=ErrorInfo(type="invalid_task", message=reason), reason=reason
        )
    if isinstance(outcome, Overdelivered):
        limit = retry.max_attempts
        message = (
            f"gave up after {limit} attempt(s): the task was delivered {attempt} times "
            "and earlier attempts ended without a result (worker crash, lost lease or shutdown)"
        )
        return _give_up(attempt, ErrorInfo(type="attempts_exhausted", message=message))
    if isinstance(outcome, BrokerRefused):
        return Decision(Action.RETRY, REPUBLISH_DELAY)
    if isinstance(outcome, Crashed):
        if outcome.finished:
            return _ACK
        return Decision(Action.ACK, error=ErrorInfo(type="internal", message=CRASHED))
    if isinstance(outcome, Aborted):
        return _ACK
    if isinstance(outcome, Cancelled):
        return _ACK if outcome.finished else Decision(Action.RETRY, 0.0)
    raise TypeError(f"not an outcome: {outcome!r}")


def _give_up(attempt: int, error: ErrorInfo) -> Decision:
    """Tell the client (``failed``), then dead-letter the task with the reason."""
    reason = f"attempts exhausted ({attempt}): {error.type}: {error.message}"[:MAX_REASON]
    return Decision(Action.DEAD_LETTER, error=error, reason=reason)


def _expire(deadline: Deadline, what: str) -> Decision:
    """Fail the task for its deadline (``what`` says how it ran out) and dead-letter it."""
    message = f"the task's deadline ({deadline.seconds:g} s after submission) {what}"
    error = ErrorInfo(type=DEADLINE_EXCEEDED, message=message[:MAX_REASON])
    return Decision(
        Action.DEAD_LETTER, error=error, reason=f"deadline exceeded: {message}"[:MAX_REASON]
    )


def _holding(outcome: Blocked) -> str:
    """Why no target of a blocked task took calls, naming what caused it when known."""
    provider, seconds = outcome.provider, outcome.seconds
    if outcome.paused:
        cause = f" after a {outcome.cause}" if outcome.cause else ""
        return f"provider {provider} is paused{cause} for {seconds:.1f} s more"
    cause = f" ({outcome.cause})" if outcome.cause else ""
    return f"the circuit of provider {provider} is open{cause} for {seconds:.1f} s more"


def _blocked_error(outcome: Blocked, attempt: int) -> ErrorInfo:
    provider, seconds = outcome.provider, outcome.seconds
    if outcome.paused:
        kind = outcome.cause or "rate_limit"
        message = (
            f"gave up after {attempt} attempt(s): provider {provider} asked to wait "
            f"({kind}) and is paused for {seconds:.1f} s more"
        )
    else:
        kind = outcome.cause or "unavailable"
        message = (
            f"gave up after {attempt} attempt(s): provider {provider} keeps failing "
            f"({kind}) and its circuit is open"
        )
    return ErrorInfo(type=kind, message=message)


# -- from what a provider call raised ----------------------------------------------------


def from_provider_error(provider: str, exc: ProviderError) -> Failed | Refused:
    """The outcome of a call to ``provider`` that raised ``exc``."""
    error = ErrorInfo(type=exc.type, message=exc.message)
    if not exc.retryable:
        return Refused(error)
    return Failed(provider, error, exc.retry_after, harder=isinstance(exc, Overloaded))


def timed_out(provider: str, seconds: float) -> Failed:
    """The outcome of a call to ``provider`` with no answer within ``seconds``."""
    return Failed(provider, ErrorInfo(type="timeout", message=f"no answer within {seconds:g} s"))


def call_crashed(exc: BaseException) -> Refused:
    """The outcome of a provider call that raised something other than ``ProviderError``
    (a bug): the message names the exception class, no text (which goes to the log)."""
    return Refused(ErrorInfo(type="internal", message=f"{CRASHED} ({type(exc).__name__})"))


def pauses_provider(exc: ProviderError) -> bool:
    """Whether ``exc``'s wait holds for the whole provider: a retryable failure with a wait
    that is a rate limit, an overload, or a 503. Other failures (a 500, a cut stream) may
    carry rate-limit reset headers that every answer has (OpenAI's ``x-ratelimit-reset-*``),
    which say nothing about the next call."""
    return (
        exc.retryable
        and exc.retry_after is not None
        and (isinstance(exc, RateLimited | Overloaded) or exc.status == 503)
    )
