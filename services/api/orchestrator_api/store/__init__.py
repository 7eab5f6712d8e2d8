"""Task records and event logs: the TaskStore protocol and its memory and Redis adapters."""

from .errors import StoreError, StoreUnavailable
from .memory import DEFAULT_SAFETY_TTL, MemoryTaskStore
from .protocol import TaskStore
from .redis import RedisTaskStore

__all__ = [
    "DEFAULT_SAFETY_TTL",
    "MemoryTaskStore",
    "RedisTaskStore",
    "StoreError",
    "StoreUnavailable",
    "TaskStore",
]
