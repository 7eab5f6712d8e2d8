"""The API service: accepts prompts over HTTP, publishes tasks, serves their results."""

from .app import build_broker, build_store, create_app
from .config import ApiSettings, ConfigError
from .model import StoredEvent, TaskRecord, TaskResult, TaskStatus
from .service import serve

__all__ = [
    "ApiSettings",
    "ConfigError",
    "StoredEvent",
    "TaskRecord",
    "TaskResult",
    "TaskStatus",
    "build_broker",
    "build_store",
    "create_app",
    "serve",
]
