"""The worker service: takes tasks from the broker, calls AI providers, publishes results.

Run it with ``serve(WorkerSettings.from_env(os.environ))`` (or ``python -m
orchestrator_worker``); embed it with ``Worker(broker, settings).run()`` and ``stop()``.
"""

from .breaker import BreakerState, CircuitBreaker
from .config import WorkerSettings
from .errors import ConfigError, WorkerError
from .events import AttemptEvents
from .hooks import NoHooks, WorkerHooks
from .limits import ProviderGuard, ProviderGuards
from .pricing import Price, PriceTable
from .retry import RetryPolicy
from .routing import ModelRouter
from .runner import TaskRunner
from .service import connect_broker, main, serve, tune_gc
from .worker import Worker, check_settings, default_fetch_batch

__all__ = [
    "AttemptEvents",
    "BreakerState",
    "CircuitBreaker",
    "ConfigError",
    "ModelRouter",
    "NoHooks",
    "Price",
    "PriceTable",
    "ProviderGuard",
    "ProviderGuards",
    "RetryPolicy",
    "TaskRunner",
    "Worker",
    "WorkerError",
    "WorkerHooks",
    "WorkerSettings",
    "check_settings",
    "connect_broker",
    "default_fetch_batch",
    "main",
    "serve",
    "tune_gc",
]
