"""The API service: accepts prompts over HTTP, publishes tasks, serves their results."""

from .app import create_app
from .config import ApiSettings, ConfigError
from .model import StoredEvent, TaskRecord, TaskResult, TaskStatus
from .service import build_resources, serve

__all__ = [
    "ApiSettings",
    "ConfigError",
    "StoredEvent",
    "TaskRecord",
    "TaskResult",
    "TaskStatus",
    "build_resources",
    "create_app",
    "serve",
]
