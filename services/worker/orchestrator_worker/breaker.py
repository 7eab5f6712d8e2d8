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

State is per worker process (each process learns on its own; no coordination through the
broker), and only outcomes of calls admitted in the current state count: a stream that
began before the circuit opened and ends after does not close it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

__all__ = ["BreakerCall", "BreakerState", "CircuitBreaker"]

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: Called on every state change: (provider, old state, new state).
StateListener = Callable[[str, BreakerState, BreakerState], None]


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
    ) -> None:
        self.name = name
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._generation = 0  # bumped on every state change: stale outcomes are ignored
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        #: The ``error.type`` of the last failure that counted (for reports).
        self.last_error: str | None = None

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit past its cooldown reads ``half_open``)."""
        if self._state is BreakerState.OPEN and self.retry_in() == 0.0:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """0 if a call may go out now; else seconds until one may (the rest of the cooldown,
        or, while a probe runs, a whole cooldown: the probe's verdict decides)."""
        if self._state is BreakerState.CLOSED:
            return 0.0
        if self._state is BreakerState.HALF_OPEN:
            return self.cooldown if self._probing else 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def admit(self) -> BreakerCall | None:
        """A call may go out: its handle, to report the outcome on. None while open."""
        if self._state is BreakerState.CLOSED:
            return BreakerCall(self, self._generation, probe=False)
        if self.retry_in() > 0.0:
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
