"""How redis-py exceptions become broker exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as rexc

from .errors import BrokerError, BrokerUnavailable

# Server replies that mean "not now" rather than "wrong": the caller may retry later.
_TRANSIENT_PREFIXES = ("LOADING", "MASTERDOWN", "READONLY", "BUSY ", "TRYAGAIN", "CLUSTERDOWN")


def is_unavailable(exc: BaseException) -> bool:
    """True for errors meaning Redis cannot serve right now (down, loading, OOM, ...)."""
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError):
        return True
    if isinstance(exc, rexc.OutOfMemoryError | rexc.ReadOnlyError):
        return True
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(_TRANSIENT_PREFIXES)


def is_nogroup(exc: BaseException) -> bool:
    """True when the stream or its consumer group does not exist (deleted, or lost)."""
    return isinstance(exc, rexc.ResponseError) and "NOGROUP" in str(exc)


def to_broker_error(exc: BaseException) -> BrokerError:
    """The broker exception for ``exc`` (the caller raises it ``from exc``)."""
    if isinstance(exc, BrokerError):
        return exc
    if is_unavailable(exc):
        return BrokerUnavailable(f"Redis unavailable: {type(exc).__name__}: {exc}")
    return BrokerError(f"Redis error: {type(exc).__name__}: {exc}")


def chained_broker_error(exc: Exception) -> Exception:
    """``to_broker_error(exc)`` with ``exc`` as its cause, as ``raise ... from exc`` would
    set it (for errors handed to a future rather than raised)."""
    error = to_broker_error(exc)
    if error is not exc:
        error.__cause__ = exc
    return error


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Re-raise redis-py (and socket) errors as ``BrokerError``/``BrokerUnavailable``."""
    try:
        yield
    except (rexc.RedisError, OSError) as exc:
        raise to_broker_error(exc) from exc
