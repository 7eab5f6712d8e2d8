"""Task records and event logs: the TaskStore protocol and its memory and Redis adapters."""

from .errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    StoreError,
    StoreUnavailable,
    TaskFinished,
    UnknownCursor,
)
from .memory import DEFAULT_PENDING_SECONDS, DEFAULT_SAFETY_TTL, MemoryTaskStore
from .protocol import TaskStore
from .redis import RedisTaskStore

__all__ = [
    "DEFAULT_PENDING_SECONDS",
    "DEFAULT_SAFETY_TTL",
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "MemoryTaskStore",
    "RedisTaskStore",
    "StoreError",
    "StoreUnavailable",
    "TaskFinished",
    "TaskStore",
    "UnknownCursor",
]
