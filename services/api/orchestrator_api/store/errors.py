"""The task store's exceptions: one root, the case the HTTP layer maps to 503, the
idempotency key still in use (409) or reused for another request (422), and a list cursor
that names none of the tenant's tasks (400)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import TaskRecord

__all__ = [
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "StoreError",
    "StoreUnavailable",
    "TaskFinished",
    "UnknownCursor",
]


class StoreError(Exception):
    """Root of every error a task store raises."""


class StoreUnavailable(StoreError):
    """The store's backend cannot be reached right now; the operation did not complete.

    Raised ``from`` the backend's own error. A ``create`` that raises this stored nothing the
    caller may rely on: answer 503 and let the client retry (with its idempotency key).
    """


class IdempotencyKeyInUse(StoreError):
    """The idempotency key's task is still being submitted by another request (created, not
    yet confirmed published). Nothing was stored: the client retries in a moment and then
    gets that task, or a new one if that request failed."""


class IdempotencyKeyReused(StoreError):
    """The idempotency key's task was created by a request with another body (its
    fingerprint differs). Nothing was stored: a new task needs a new key."""


class TaskFinished(StoreError):
    """``cancel`` of a task that has succeeded or failed already: nothing changed."""

    def __init__(self, record: TaskRecord) -> None:
        super().__init__("the task has finished")
        self.record = record


class UnknownCursor(StoreError):
    """``list_tasks(after=...)`` named no task in the tenant's list: unknown, another
    tenant's, or expired. Nothing was read."""
