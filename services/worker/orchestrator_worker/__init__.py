"""The worker service: takes tasks from the broker, calls AI providers, publishes results.

Run it with ``serve(WorkerSettings.from_env(os.environ))`` (or ``python -m
orchestrator_worker``); embed it with ``Worker(broker, settings).run()`` and ``stop()``.
"""

from .config import WorkerSettings
from .errors import ConfigError, WorkerError
from .events import AttemptEvents
from .messages import ErrorInfo, EventKind, ResultEvent, TaskMessage, Usage
from .runner import InvalidTask, TaskRunner, parse_task
from .service import connect_broker, main, serve, tune_gc
from .worker import Worker, default_fetch_batch

__all__ = [
    "AttemptEvents",
    "ConfigError",
    "ErrorInfo",
    "EventKind",
    "InvalidTask",
    "ResultEvent",
    "TaskMessage",
    "TaskRunner",
    "Usage",
    "Worker",
    "WorkerError",
    "WorkerSettings",
    "connect_broker",
    "default_fetch_batch",
    "main",
    "parse_task",
    "serve",
    "tune_gc",
]
