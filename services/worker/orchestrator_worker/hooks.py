"""Where the worker's fault handling tells the outside what it decided: one place to count.

``WorkerHooks`` receives every retry, fallback, deferral, dead letter, circuit breaker
change and provider pause (metrics implement it; ``Worker(..., hooks=...)``). Calls are
synchronous and happen on the event loop in the middle of task handling: implementations
must be quick and must not raise (an exception is logged and otherwise ignored).
"""

from __future__ import annotations

import logging
from typing import Protocol

from .breaker import BreakerState

__all__ = ["NO_HOOKS", "NoHooks", "WorkerHooks", "safe_hooks"]

log = logging.getLogger(__name__)


class WorkerHooks(Protocol):
    """Observer of the worker's fault handling decisions."""

    def retry_scheduled(self, provider: str, error_type: str, attempt: int, delay: float) -> None:
        """Attempt ``attempt`` failed retryably with ``error_type`` on ``provider``; the task
        is handed back for ``delay`` seconds."""

    def fallback(self, from_provider: str, to_provider: str, error_type: str) -> None:
        """A task of an alias moved from one target to the next within its attempt
        (``error_type`` is ``circuit_open`` or ``paused`` when the first one was not even
        tried)."""

    def deferred(self, provider: str, delay: float, reason: str) -> None:
        """A task was handed back untried for ``delay`` seconds: its provider's circuit is
        open (``reason`` ``circuit_open``) or the provider is paused (``paused``), and its
        alias has no other target."""

    def dead_lettered(self, reason: str, error_type: str) -> None:
        """A task ran out of attempts and went to the dead-letter stream (``reason``); its
        client got a ``failed`` event of ``error_type``."""

    def breaker_changed(self, provider: str, old: BreakerState, new: BreakerState) -> None:
        """``provider``'s circuit went from ``old`` to ``new``."""

    def provider_paused(self, provider: str, seconds: float, error_type: str) -> None:
        """``provider`` failed with ``error_type`` and asked for a wait (``Retry-After``):
        no calls to it for ``seconds`` (a pause that began, or grew by a second or more)."""


class NoHooks:
    """Hooks that do nothing (the default)."""

    def retry_scheduled(self, provider: str, error_type: str, attempt: int, delay: float) -> None:
        pass

    def fallback(self, from_provider: str, to_provider: str, error_type: str) -> None:
        pass

    def deferred(self, provider: str, delay: float, reason: str) -> None:
        pass

    def dead_lettered(self, reason: str, error_type: str) -> None:
        pass

    def breaker_changed(self, provider: str, old: BreakerState, new: BreakerState) -> None:
        pass

    def provider_paused(self, provider: str, seconds: float, error_type: str) -> None:
        pass


NO_HOOKS = NoHooks()


class _SafeHooks:
    """Forwards to ``hooks``, logging rather than raising what they raise."""

    def __init__(self, hooks: WorkerHooks) -> None:
        self._hooks = hooks

    def retry_scheduled(self, provider: str, error_type: str, attempt: int, delay: float) -> None:
        try:
            self._hooks.retry_scheduled(provider, error_type, attempt, delay)
        except Exception:
            log.exception("hook retry_scheduled failed")

    def fallback(self, from_provider: str, to_provider: str, error_type: str) -> None:
        try:
            self._hooks.fallback(from_provider, to_provider, error_type)
        except Exception:
            log.exception("hook fallback failed")

    def deferred(self, provider: str, delay: float, reason: str) -> None:
        try:
            self._hooks.deferred(provider, delay, reason)
        except Exception:
            log.exception("hook deferred failed")

    def dead_lettered(self, reason: str, error_type: str) -> None:
        try:
            self._hooks.dead_lettered(reason, error_type)
        except Exception:
            log.exception("hook dead_lettered failed")

    def breaker_changed(self, provider: str, old: BreakerState, new: BreakerState) -> None:
        try:
            self._hooks.breaker_changed(provider, old, new)
        except Exception:
            log.exception("hook breaker_changed failed")

    def provider_paused(self, provider: str, seconds: float, error_type: str) -> None:
        try:
            self._hooks.provider_paused(provider, seconds, error_type)
        except Exception:
            log.exception("hook provider_paused failed")


def safe_hooks(hooks: WorkerHooks | None) -> WorkerHooks:
    """``hooks`` wrapped so that they cannot break task handling (``NO_HOOKS`` for None)."""
    return NO_HOOKS if hooks is None else _SafeHooks(hooks)
