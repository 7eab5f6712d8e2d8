"""A circuit breaker per provider: stop calling a provider that keeps failing.

::

    closed --(BREAKER_FAILURES retryable failures in a row)--> open
    open --(BREAKER_COOLDOWN_SECONDS later, on the next task)--> half_open: one probe call
    half_open --probe succeeds--> closed          half_open --probe fails--> open (again)

Only *retryable* failures count (rate limits, 5xx, timeouts, connection errors, cut
streams): a 400 or a 401 is the provider answering, and resets the count like a success.
While the circuit is open no call goes out: the worker sends the task to the next target of
its alias, or hands it back until the cooldown is over (see ``runner``). In half-open state
one call probes while the others wait; a probe that ends without a verdict (cancelled,
worker bug) frees the probe for the next task.

A provider can also *pause* itself: a rate limit, an overload or a 503 that carries the
provider's own wait (``Retry-After``, rate-limit reset headers; ``runner`` decides) stops
every call to it until that wait is
over (``pause``), whatever the circuit's state, so the other tasks of this process do not
hit the same rate limit. A longer hint extends the pause, a shorter one never shortens it,
and hints are cut to ``retry.MAX_HINT_SECONDS``. Calls in flight run on. While paused,
tasks are treated as for an open circuit; ``hold()`` says which of the two holds them back.

State is per worker process (each process learns on its own; no coordination through the
broker), and only outcomes of calls admitted in the current state count: a stream that
began before the circuit opened and ends after does not close it.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable

import attrs

from .retry import MAX_HINT_SECONDS

__all__ = ["CIRCUIT_OPEN", "PAUSED", "BreakerCall", "BreakerState", "CircuitBreaker", "Hold"]

log = logging.getLogger(__name__)

#: ``Hold.reason`` values (also the ``reason`` of deferrals and fallbacks in metrics).
CIRCUIT_OPEN = "circuit_open"
PAUSED = "paused"
#: A pause extended by less than this is not news: concurrent calls rejected together bring
#: hints a few milliseconds apart, and only the first is logged and reported.
_NOTABLE_EXTENSION = 1.0


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: Called on every state change: (provider, old state, new state).
StateListener = Callable[[str, BreakerState, BreakerState], None]
#: Called when a pause begins or grows notably: (provider, seconds it lasts, error type).
PauseListener = Callable[[str, float, str], None]


@attrs.frozen
class Hold:
    """Why a provider takes no call now (``PAUSED`` or ``CIRCUIT_OPEN``), and for how many
    more seconds."""

    reason: str
    seconds: float


class CircuitBreaker:
    """The breaker of one provider; ``failures`` 0 disables it (always closed)."""

    def __init__(
        self,
        name: str,
        *,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateListener | None = None,
        on_pause: PauseListener | None = None,
    ) -> None:
        self.name = name
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._on_pause = on_pause
        self._paused_until = -math.inf  # clock() time; no call is admitted before it
        self._state = BreakerState.CLOSED
        self._generation = 0  # bumped on every state change: stale outcomes are ignored
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        #: The ``error.type`` of the last failure that counted (for reports).
        self.last_error: str | None = None
        #: The ``error.type`` of the failure that set the current pause (for reports).
        self.paused_by: str | None = None

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit past its cooldown reads ``half_open``; a pause is
        not a state: see ``paused_for``)."""
        if self._state is BreakerState.OPEN and self._circuit_wait() == 0.0:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """0 if a call may go out now; else seconds until one may (see ``hold``)."""
        hold = self.hold()
        return 0.0 if hold is None else hold.seconds

    def hold(self) -> Hold | None:
        """None if a call may go out now; else what holds calls back and for how long: the
        rest of a pause, or of the cooldown (while a probe runs, a whole cooldown: the
        probe's verdict decides), whichever is longer."""
        paused = self.paused_for()
        circuit = self._circuit_wait()
        if paused <= 0.0 and circuit <= 0.0:
            return None
        if paused >= circuit:
            return Hold(PAUSED, paused)
        return Hold(CIRCUIT_OPEN, circuit)

    def paused_for(self) -> float:
        """Seconds left of the provider's pause (0 if it is not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float, error_type: str) -> float:
        """The provider asked for ``seconds`` without calls (``Retry-After`` on a failure of
        ``error_type``): admit none until then. Only ever extends the pause. The seconds the
        pause lasts now if this hint began or extended it, else 0."""
        if not seconds > 0.0:  # also NaN
            return 0.0
        now = self._clock()
        until = now + min(seconds, MAX_HINT_SECONDS)
        previous = self._paused_until
        if until <= previous:
            return 0.0
        self._paused_until = until
        self.paused_by = error_type
        lasts = until - now
        if previous <= now or until - previous >= _NOTABLE_EXTENSION:
            log.info(
                "provider %s asked to wait (%s): no calls to it from this worker for %.2f s",
                self.name,
                error_type,
                lasts,
            )
            if self._on_pause is not None:
                self._on_pause(self.name, lasts, error_type)
        return lasts

    def _circuit_wait(self) -> float:
        if self._state is BreakerState.CLOSED:
            return 0.0
        if self._state is BreakerState.HALF_OPEN:
            return self.cooldown if self._probing else 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def admit(self) -> BreakerCall | None:
        """A call may go out: its handle, to report the outcome on. None while open or
        paused."""
        if self.paused_for() > 0.0:
            return None
        if self._state is BreakerState.CLOSED:
            return BreakerCall(self, self._generation, probe=False)
        if self._circuit_wait() > 0.0:
            return None
        if self._state is BreakerState.OPEN:
            self._change(BreakerState.HALF_OPEN)
        self._probing = True
        return BreakerCall(self, self._generation, probe=True)

    def _outcome(self, call: BreakerCall, *, failed: bool, error_type: str | None) -> None:
        if call.probe and call.generation == self._generation:
            self._probing = False
        if call.generation != self._generation or self.threshold <= 0:
            return
        if not failed:
            self._failures = 0
            if self._state is not BreakerState.CLOSED:
                self._change(BreakerState.CLOSED)
            return
        self._failures += 1
        self.last_error = error_type
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            self._opened_at = self._clock()
            self._change(BreakerState.OPEN)

    def _released(self, call: BreakerCall) -> None:
        if call.probe and call.generation == self._generation:
            self._probing = False

    def _change(self, state: BreakerState) -> None:
        old, self._state = self._state, state
        self._generation += 1
        self._probing = False
        if state is BreakerState.CLOSED:
            self._failures = 0
        if state is BreakerState.OPEN:
            log.warning(
                "circuit for provider %s opened after %d failure(s) in a row (last: %s); "
                "no calls for %g s",
                self.name,
                self._failures,
                self.last_error,
                self.cooldown,
            )
        else:
            log.info("circuit for provider %s is %s", self.name, state.value)
        if self._on_change is not None:
            self._on_change(self.name, old, state)


class BreakerCall:
    """One admitted call; report ``succeeded()``, ``failed(type)`` or ``release()`` (no
    verdict) once; later reports are ignored."""

    __slots__ = ("_breaker", "_done", "generation", "probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, *, probe: bool) -> None:
        self._breaker = breaker
        self.generation = generation
        self.probe = probe
        self._done = False

    def succeeded(self) -> None:
        """The provider answered (with an answer, or with a non-retryable refusal)."""
        if not self._done:
            self._done = True
            self._breaker._outcome(self, failed=False, error_type=None)

    def failed(self, error_type: str) -> None:
        """The call failed in a way worth retrying: it counts towards opening."""
        if not self._done:
            self._done = True
            self._breaker._outcome(self, failed=True, error_type=error_type)

    def release(self) -> None:
        """The call ended without telling anything about the provider."""
        if not self._done:
            self._done = True
            self._breaker._released(self)
