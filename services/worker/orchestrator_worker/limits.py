"""Per-provider guards: a concurrency limit and a circuit breaker for each provider (the
breaker also holds the pause a provider asks for with ``Retry-After``: see ``breaker``).

``PROVIDER_CONCURRENCY="openai=50,gemini=20"`` caps the calls one worker process has open
at once to each listed provider (unlisted providers: no cap beyond ``NUMBER_OF_WORKERS``).
A task over the cap waits for a free place in its worker slot; the cap is per process, so
the fleet-wide figure is the cap times the number of worker processes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Mapping

from orchestrator_settings import Env

from .breaker import CircuitBreaker, PauseListener, StateListener
from .errors import ConfigError

__all__ = ["ProviderGuard", "ProviderGuards", "parse_concurrency", "whole_limit"]

_PROVIDER = re.compile(r"[A-Za-z0-9_.\-]+")

VARIABLE = "PROVIDER_CONCURRENCY"


def parse_concurrency(variable: str, raw: str) -> dict[str, int]:
    """``provider=limit,...`` as a mapping; ``ConfigError`` naming ``variable``."""
    return Env({variable: raw}).mapping(
        variable, whole_limit, key=_PROVIDER, entry="provider=limit (e.g. openai=50)"
    )


def whole_limit(raw: str) -> int:
    """A limit of things at once: a whole number in 1..1000000 (``ValueError`` otherwise)."""
    try:
        limit = int(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a whole number") from None
    if not 1 <= limit <= 1_000_000:
        raise ValueError(f"{limit} is outside 1..1000000")
    return limit


class ProviderGuard:
    """The breaker and the concurrency limit of one provider."""

    def __init__(self, breaker: CircuitBreaker, limit: int | None) -> None:
        self.breaker = breaker
        self.limit = limit
        self._slots = asyncio.Semaphore(limit) if limit else None
        #: Calls to this provider running now (for metrics and tests).
        self.in_flight = 0

    async def acquire(self) -> None:
        """Take one of the provider's places for a call (waiting for one if all are taken);
        give it back with ``release()``."""
        if self._slots is not None:
            await self._slots.acquire()
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        if self._slots is not None:
            self._slots.release()


class ProviderGuards:
    """The guards of every provider, made on first use."""

    def __init__(
        self,
        *,
        concurrency: Mapping[str, int] | None = None,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_breaker_change: StateListener | None = None,
        on_pause: PauseListener | None = None,
    ) -> None:
        self._limits = dict(concurrency or {})
        self._failures = breaker_failures
        self._cooldown = breaker_cooldown
        self._clock = clock
        self._on_change = on_breaker_change
        self._on_pause = on_pause
        self._guards: dict[str, ProviderGuard] = {}

    def __getitem__(self, provider: str) -> ProviderGuard:
        guard = self._guards.get(provider)
        if guard is None:
            breaker = CircuitBreaker(
                provider,
                failures=self._failures,
                cooldown=self._cooldown,
                clock=self._clock,
                on_change=self._on_change,
                on_pause=self._on_pause,
            )
            guard = self._guards[provider] = ProviderGuard(breaker, self._limits.get(provider))
        return guard

    @property
    def guards(self) -> dict[str, ProviderGuard]:
        """The guards made so far, by provider (for metrics: breaker state, pause, calls in
        flight)."""
        return dict(self._guards)

    def check(self, providers: Iterable[str]) -> None:
        """``ConfigError`` naming ``PROVIDER_CONCURRENCY`` if it limits an unknown provider."""
        known = set(providers)
        for name in self._limits:
            if name not in known:
                raise ConfigError(
                    VARIABLE, f"{name!r} is not a provider (known: {', '.join(sorted(known))})"
                )
