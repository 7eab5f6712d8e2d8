"""What both adapters share for keyed (fair) publishing: the stream fields a dispatched entry
carries, and the checks ``publish`` makes."""

from __future__ import annotations

from .protocol import PRIORITIES, Fairness

#: Stream fields of a dispatched keyed entry (reserved: no header may use them).
FAIR_KEY = "fair_key"
FAIR_PRIORITY = "fair_priority"
FAIR_ENQUEUED = "fair_enqueued"  # when it entered the waiting room (epoch ms)
FAIR_FIELDS = frozenset({FAIR_KEY, FAIR_PRIORITY, FAIR_ENQUEUED})

#: Longest key accepted (a tenant id), so a key cannot bloat every Redis key name.
MAX_KEY_LENGTH = 200


def check_fair(key: str | None, priority: str) -> None:
    """``ValueError`` for an empty or overlong key, one with a brace, or an unknown priority.

    The Redis adapter names a key's own Redis keys with it as a Cluster hash tag
    (``S:q:{key}:high``); a brace in it could split them over hash slots.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"key must be 1 to {MAX_KEY_LENGTH} characters, got {key!r}")
    if key is not None and ("{" in key or "}" in key):
        raise ValueError(f"key must not hold a brace ({{ or }}), got {key!r}")


def check_top(top: int) -> None:
    """``ValueError`` unless ``top`` (how many keys ``waiting_keys`` returns) is >= 1."""
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a whole number >= 1, got {top!r}")


def fairness_arg(fairness: Fairness, lease: float) -> str:
    """``fairness`` and the lease as the dispatch script reads them:
    ``lease_ms;aging_ms;key=weight,...;key=cap,...``."""
    weights = ",".join(f"{k}={float(v)!r}" for k, v in fairness.weights.items())
    caps = ",".join(f"{k}={v}" for k, v in fairness.caps.items())
    return f"{round(lease * 1000)};{round(fairness.aging * 1000)};{weights};{caps}"
