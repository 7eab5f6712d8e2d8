"""The task store's exceptions: one root, and the case the HTTP layer maps to 503."""

from __future__ import annotations

__all__ = ["StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """Root of every error a task store raises."""


class StoreUnavailable(StoreError):
    """The store's backend cannot be reached right now; the operation did not complete.

    Raised ``from`` the backend's own error. A ``create`` that raises this stored nothing the
    caller may rely on: answer 503 and let the client retry (with its idempotency key).
    """
