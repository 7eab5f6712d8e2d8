"""The aiohttp application: routes, middlewares, and the results consumer's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol

from aiohttp import web
from opentelemetry import trace

from orchestrator_broker import Broker
from orchestrator_tasks import presence_group
from orchestrator_telemetry.runtime import cleanup_ctx, closing, traced_broker

from .admin import add_admin_routes
from .batch.protocol import BatchStore
from .batches import add_batch_api
from .catalog import add_model_routes
from .config import ApiSettings
from .console import add_console_routes
from .metrics import METRICS, ApiMetrics
from .problems import error_middleware
from .ratelimit import RateLimiter
from .routes import add_routes
from .state import STATE, ApiState
from .store.protocol import TaskStore
from .streaming import DEFAULT_HEARTBEAT, StreamRegistry
from .strict import strict_input_middleware
from .tasks import DEFAULT_PUBLISH_TIMEOUT, TaskService
from .workers import WorkerDirectory

__all__ = [
    "BROKER",
    "RESULTS_TASK",
    "STORE",
    "Runnable",
    "backend_label",
    "build_broker",
    "build_store",
    "create_app",
]

log = logging.getLogger(__name__)

#: Paths that get no server span (polled by orchestrators and Prometheus; they would drown
#: real traces).
UNTRACED_PATHS: Final = ("/health", "/metrics")
#: How long the results consumer may take to stop before it is cancelled.
_CONSUMER_STOP_TIMEOUT: Final = 10.0


class Runnable(Protocol):
    """A background service: ``run()`` until ``stop()`` (the results consumer)."""

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


RESULTS_TASK = web.AppKey("orchestrator_api.results_task", asyncio.Task[None])
#: The app's broker (traced) and task store, from startup to cleanup.
BROKER = web.AppKey("orchestrator_api.broker", Broker)
STORE = web.AppKey("orchestrator_api.store", TaskStore)


def create_app(
    settings: ApiSettings,
    *,
    broker: Broker | None = None,
    store: TaskStore | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    results_consumer: Runnable | None = None,
    consume_results: bool = True,
    heartbeat: float = DEFAULT_HEARTBEAT,
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
    metrics: ApiMetrics | None = None,
    batch_store: BatchStore | None = None,
) -> web.Application:
    """The API app on ``broker`` and ``store``.

    A ``broker`` or ``store`` passed in is the caller's to close; one left out is built from
    ``REDIS_URI`` (in-memory when unset) when the app starts and closed when it cleans up,
    each as a ``cleanup_ctx`` of its own, so the app opens and closes its resources in one
    order. While the app runs, a results consumer applies worker results from
    ``settings.results_stream`` to the store (``consume_results=False`` leaves that to
    someone else; tests pass their own ``results_consumer``). Every request gets a server span
    from ``tracer_provider`` (default: the global one), whose ``traceparent`` the response
    carries. ``GET /metrics`` (no auth) serves ``metrics`` (default: new ``ApiMetrics``;
    single-process mode passes one on the registry it shares with the worker). The Files and
    Batches APIs keep their files and batches in ``batch_store`` (the caller's to close;
    default: built from ``REDIS_URI`` like the store). Raises
    ``ConfigError`` when auth is on and there are no API keys.
    """
    keyring = settings.keyring()
    metrics = metrics or ApiMetrics(max_label_values=settings.metrics_max_label_values)
    # Inside the tracing middleware (added below, outermost): exemplars get the request's
    # trace id; outside the error middleware: it sees the statuses clients see.
    app = web.Application(
        middlewares=[metrics.middleware(), error_middleware, strict_input_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[METRICS] = metrics
    if broker is None:
        app.cleanup_ctx.append(
            cleanup_ctx(BROKER, lambda _: traced_broker(build_broker(settings), tracer_provider))
        )
    else:
        app[BROKER] = broker
    if store is None:
        app.cleanup_ctx.append(cleanup_ctx(STORE, lambda _: closing(build_store(settings))))
    else:
        app[STORE] = store
    streams = StreamRegistry()

    @contextlib.asynccontextmanager
    async def handler_state(app: web.Application) -> AsyncIterator[ApiState]:
        broker, store = app[BROKER], app[STORE]
        metrics.watch_queues(
            broker, tasks_stream=settings.stream, results_stream=settings.results_stream
        )
        workers = WorkerDirectory(broker, presence_group(settings.stream))
        yield ApiState(
            settings=settings,
            keyring=keyring,
            broker=broker,
            store=store,
            tasks=TaskService(broker, store, settings.stream, publish_timeout),
            streams=streams,
            workers=workers,
            limiter=RateLimiter(settings.rate_limits) if settings.rate_limits else None,
            heartbeat=heartbeat,
        )
        await workers.close()

    app.cleanup_ctx.append(cleanup_ctx(STATE, handler_state))
    add_batch_api(app, settings, batch_store)  # after STATE: its runner submits tasks
    add_routes(app)
    add_model_routes(app)
    add_console_routes(app)
    add_admin_routes(app)
    _add_metrics(app, metrics, streams)
    _instrument(app, tracer_provider)
    app.on_shutdown.append(streams.close_all)
    if consume_results or results_consumer is not None:
        app.cleanup_ctx.append(_results_ctx(settings, metrics, results_consumer))
    return app


def build_broker(settings: ApiSettings) -> Broker:
    """The broker adapter ``REDIS_URI`` asks for (in-memory when unset), not yet traced."""
    if settings.redis_url is None:
        from orchestrator_broker.memory import MemoryBroker

        return MemoryBroker(dead_letter_maxlen=settings.dead_letter_maxlen)
    from orchestrator_broker.redis_streams import RedisStreamsBroker

    return RedisStreamsBroker.from_url(
        settings.redis_url, dead_letter_maxlen=settings.dead_letter_maxlen
    )


def build_store(settings: ApiSettings) -> TaskStore:
    """The task store ``REDIS_URI`` asks for (in-memory when unset)."""
    if settings.redis_url is None:
        from .store.memory import MemoryTaskStore

        return MemoryTaskStore(settings.cache_ttl_seconds)
    from .store.redis import RedisTaskStore

    return RedisTaskStore.from_url(settings.redis_url, ttl_seconds=settings.cache_ttl_seconds)


def backend_label(settings: ApiSettings) -> str:
    """What the broker and store are, for the startup line (any password masked)."""
    if settings.redis_url is None:
        return "in-memory"
    return f"redis {settings.masked_redis_url}"


def _add_metrics(app: web.Application, metrics: ApiMetrics, streams: StreamRegistry) -> None:
    from orchestrator_telemetry.metrics_http import metrics_handler

    metrics.watch_streams(streams)
    app.router.add_get("/metrics", metrics_handler(metrics.registry), allow_head=False)


def _instrument(app: web.Application, tracer_provider: trace.TracerProvider | None) -> None:
    try:
        from orchestrator_telemetry import instrument_app
    except ImportError:  # pragma: no cover - telemetry is a hard dependency in the wheel
        log.warning("orchestrator_telemetry unavailable: requests are not traced")
        return
    instrument_app(app, tracer_provider, exclude_paths=UNTRACED_PATHS)


def _default_consumer(
    settings: ApiSettings, broker: Broker, store: TaskStore, metrics: ApiMetrics
) -> Runnable:
    from .results import ResultsConsumer

    consumer = ResultsConsumer(
        broker, store, stream=settings.results_stream, on_applied=metrics.result_applied
    )
    metrics.watch_consumer(consumer.stats)
    return consumer


def _results_ctx(
    settings: ApiSettings, metrics: ApiMetrics, given: Runnable | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def results_consumer(app: web.Application) -> AsyncIterator[None]:
        """Apply worker results while the app runs; stop consuming before the store closes."""
        consumer = given or _default_consumer(settings, app[BROKER], app[STORE], metrics)
        task = asyncio.create_task(consumer.run(), name="results-consumer")
        app[RESULTS_TASK] = task
        yield
        await consumer.stop()
        try:
            async with asyncio.timeout(_CONSUMER_STOP_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning(
                "results consumer did not stop in %.0fs; cancelling", _CONSUMER_STOP_TIMEOUT
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:
            log.exception("results consumer failed")

    return results_consumer
