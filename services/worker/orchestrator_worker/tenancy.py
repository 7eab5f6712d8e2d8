"""How the worker shares its slots among tenants: the parsers of ``TENANT_WEIGHTS`` and
``TENANT_CONCURRENCY``, which ``WorkerSettings.fairness`` gives the broker as a ``Fairness``.

Every worker of a stream must run with the same three: the dispatch that picks the next task
runs in whichever worker asks for work, with its own settings.
"""

from __future__ import annotations

import math
import re

from orchestrator_settings import Env

from .limits import whole_limit

#: A tenant as these settings name it, or ``*`` for every other tenant.
_TENANT = re.compile(r"\*|[A-Za-z0-9_.:@\-]+")


def parse_weights(variable: str, raw: str) -> dict[str, float]:
    """``tenant=weight,...`` (``*`` for the rest; weights > 0) as a mapping."""
    return Env({variable: raw}).mapping(
        variable, _weight, key=_TENANT, entry="tenant=weight (e.g. *=1,acme=3)"
    )


def parse_caps(variable: str, raw: str) -> dict[str, int]:
    """``tenant=tasks,...`` (``*`` for the rest; whole numbers >= 1) as a mapping."""
    return Env({variable: raw}).mapping(
        variable, whole_limit, key=_TENANT, entry="tenant=tasks (e.g. *=20,acme=50)"
    )


def _weight(raw: str) -> float:
    try:
        weight = float(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number") from None
    if not (math.isfinite(weight) and 0 < weight <= 1_000_000):
        raise ValueError(f"{raw} is outside (0, 1000000]")
    return weight
