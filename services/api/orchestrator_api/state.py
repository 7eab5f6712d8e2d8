"""What the handlers need, held by the app under typed keys."""

from __future__ import annotations

import attrs
from aiohttp import web

from orchestrator_broker import Broker

from .auth import KeyRing
from .config import ApiSettings
from .ratelimit import RateLimiter
from .store.protocol import TaskStore
from .streaming import DEFAULT_HEARTBEAT, StreamRegistry
from .tasks import TaskService
from .workers import WorkerDirectory

__all__ = ["STATE", "ApiState"]


@attrs.frozen
class ApiState:
    """Everything a request handler uses, looked up once per request."""

    settings: ApiSettings
    keyring: KeyRing
    broker: Broker
    store: TaskStore
    tasks: TaskService
    streams: StreamRegistry
    workers: WorkerDirectory  # the live workers' adverts (GET /v1/models, the submit check)
    limiter: RateLimiter | None = None  # None: no RATE_LIMITS
    heartbeat: float = DEFAULT_HEARTBEAT
    health_timeout: float = 1.0


STATE = web.AppKey("orchestrator_api.state", ApiState)
