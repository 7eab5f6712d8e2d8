"""When a failed attempt runs again: exponential backoff with full jitter, honouring hints.

A retryable failure hands the task back to the broker with ``nack(delay)``, so the wait holds
no worker slot. The delay of attempt ``n`` (1 for the first delivery) is::

    backoff = uniform(0, min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (n - 1)))
    delay   = backoff                      without a hint from the provider
    delay   = retry_after + backoff        with one (``Retry-After``, rate-limit reset headers)

"Full jitter" (AWS Architecture Blog, *Exponential Backoff And Jitter*) spreads the retries of
tasks that failed together over the whole window instead of bunching them at its end. With a
provider's hint the task waits *at least* that long, and the jitter on top keeps a hundred
tasks told ``Retry-After: 2`` from all coming back in the same millisecond. ``Overloaded``
(HTTP 529) backs off one step further than other server errors. A hint is honoured up to
``MAX_HINT_SECONDS`` (an hour): past that it is a misconfigured proxy, not a rate limit.
The same hint also pauses the provider for every task of the process (``breaker``), so the
other tasks wait too instead of collecting a rate limit each.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

__all__ = ["MAX_HINT_SECONDS", "RetryPolicy"]

#: The longest provider hint (``Retry-After``) honoured, in seconds.
MAX_HINT_SECONDS = 3600.0


@attrs.frozen
class RetryPolicy:
    """How often and how late failed attempts run again (``MAX_ATTEMPTS``,
    ``RETRY_BASE_SECONDS``, ``RETRY_MAX_SECONDS``)."""

    max_attempts: int = 5
    base: float = 1.0
    cap: float = 60.0
    #: The random source, ``uniform(a, b)``; tests may pin it.
    uniform: Callable[[float, float], float] = attrs.field(
        default=random.uniform, eq=False, repr=False
    )

    def exhausted(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` is the last one allowed (or past it)."""
        return attempt >= self.max_attempts

    def window(self, attempt: int, *, harder: bool = False) -> float:
        """The backoff window after attempt ``attempt``: ``base * 2**(attempt-1)``, capped."""
        exponent = max(0, attempt - 1) + (1 if harder else 0)
        # 2**exponent overflows floats past ~1000; the cap is reached long before.
        return min(self.cap, self.base * 2.0 ** min(exponent, 64))

    def delay(self, attempt: int, *, hint: float | None = None, harder: bool = False) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (see the module docstring)."""
        backoff = self.uniform(0.0, self.window(attempt, harder=harder))
        if hint is None or hint <= 0:
            return backoff
        return min(hint, MAX_HINT_SECONDS) + backoff

    def deferral(self, remaining: float) -> float:
        """Seconds to hand a task back for while its provider's circuit is open (or the
        provider paused) for ``remaining`` more seconds: that, plus up to a quarter more (so
        the tasks held back do not all return at the instant the circuit half-opens), and
        never less than a twentieth of a second."""
        remaining = max(remaining, 0.05)
        return remaining + self.uniform(0.0, remaining / 4)
