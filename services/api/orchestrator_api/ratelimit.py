"""Submission rate limits per tenant: a token bucket each, in this API process.

``RATE_LIMITS`` gives them: ``*=50/s,acme=200/s,batch=6000/m``. A rate is a count per second,
minute or hour (``/s``, ``/m``, ``/h``); ``*`` applies to every tenant not named (unset: those
are not limited). A tenant's bucket holds up to the count of its rate (its burst) and refills
at the rate, so ``600/m`` allows a burst of 600, then 10 a second. A ``POST /v1/tasks`` over
the limit is a ``429`` with ``Retry-After``; nothing is stored.

Buckets live in each API process: with N replicas behind a load balancer a tenant gets up to
N times its rate. They limit how fast tasks arrive, not how many run at once.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Final

import attrs

__all__ = ["EVERY_TENANT", "Rate", "RateLimiter", "parse_rate_limits", "retry_after_header"]

_PERIODS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*/\s*([smh])$")
_TENANT = re.compile(r"^(\*|[A-Za-z0-9_.\-]+)$")
#: The tenant entry that applies to every tenant not named.
EVERY_TENANT: Final = "*"


@attrs.frozen
class Rate:
    """``count`` submissions per ``period`` seconds (also the burst)."""

    count: float
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.period]
        return f"{self.count:g}/{unit}"


def parse_rate_limits(raw: str) -> dict[str, Rate]:
    """``tenant=rate,...`` as a mapping; ``ValueError`` says which entry is wrong."""
    limits: dict[str, Rate] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        tenant, equals, value = (part.strip() for part in entry.partition("="))
        if not equals or not _TENANT.match(tenant):
            raise ValueError(f"{entry!r} is not tenant=N/s (or /m, /h; tenant * for all)")
        match = _RATE.match(value)
        if match is None:
            raise ValueError(f"{tenant}: {value!r} is not a rate such as 50/s, 600/m or 1000/h")
        count = float(match.group(1))
        if count < 1:
            raise ValueError(f"{tenant}: the rate must allow at least 1 request")
        if tenant in limits:
            raise ValueError(f"{tenant} is given twice")
        limits[tenant] = Rate(count, _PERIODS[match.group(2)])
    return limits


@attrs.define
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by tenant; ``acquire(tenant)`` is 0.0 when a submission may go, else
    the seconds until one may."""

    def __init__(
        self, limits: Mapping[str, Rate], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = dict(limits)
        self._default = self._limits.pop(EVERY_TENANT, None)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __repr__(self) -> str:
        named = ", ".join(f"{t}={r}" for t, r in sorted(self._limits.items()))
        return f"RateLimiter(default={self._default}, {named})"

    def rate(self, tenant: str) -> Rate | None:
        """The tenant's rate, or None when it is not limited."""
        return self._limits.get(tenant, self._default)

    def acquire(self, tenant: str) -> float:
        rate = self._limits.get(tenant, self._default)
        if rate is None:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(rate.count, now)
        else:
            refill = (now - bucket.updated) * rate.per_second
            bucket.tokens = min(rate.count, bucket.tokens + refill)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate.per_second


def retry_after_header(wait: float) -> str:
    """``Retry-After`` for a wait in seconds: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
