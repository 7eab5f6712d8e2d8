"""Running the API service: build its resources, serve HTTP, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable, Mapping

from aiohttp import web
from opentelemetry import trace

from orchestrator_broker import Broker, BrokerError
from orchestrator_broker.redis_streams import check_supported_server

from .app import create_app
from .config import ApiSettings
from .metrics import ApiMetrics
from .runner import ApiRunner
from .store.protocol import TaskStore

__all__ = ["build_resources", "serve"]

log = logging.getLogger("orchestrator_api")


def build_resources(settings: ApiSettings) -> tuple[Broker, TaskStore, str]:
    """The broker and store ``REDIS_URI`` asks for (in-memory when unset), and a log label."""
    url = settings.redis_url
    if url is None:
        from orchestrator_broker.memory import MemoryBroker

        from .store.memory import MemoryTaskStore

        broker = MemoryBroker(dead_letter_maxlen=settings.dead_letter_maxlen)
        return broker, MemoryTaskStore(settings.cache_ttl_seconds), "in-memory"
    from orchestrator_broker.redis_streams import RedisStreamsBroker

    from .store.redis import RedisTaskStore

    redis_broker = RedisStreamsBroker.from_url(url, dead_letter_maxlen=settings.dead_letter_maxlen)
    store = RedisTaskStore.from_url(url, ttl_seconds=settings.cache_ttl_seconds)
    return redis_broker, store, f"redis {settings.masked_redis_url}"


async def serve(
    settings: ApiSettings,
    *,
    broker: Broker | None = None,
    store: TaskStore | None = None,
    host: str | None = None,
    port: int | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    stop: asyncio.Event | None = None,
    on_started: Callable[[str], None] | None = None,
    environ: Mapping[str, str] | None = None,
    metrics: ApiMetrics | None = None,
    labels: tuple[str, str] | None = None,
) -> None:
    """Serve the API until SIGTERM/SIGINT (or until ``stop`` is set), then drain.

    Without ``broker``/``store`` it builds them from ``REDIS_URI`` (and closes them at the
    end); a caller that passes its own keeps ownership (single-process mode shares one
    in-memory broker and store with the workers). Without ``tracer_provider`` it sets up
    telemetry from ``environ`` (``JAEGER_URI``, ``OTEL_*``) and flushes it at the end.
    ``host``/``port`` override the settings (port 0 picks a free port; ``on_started``
    receives the base URL once listening; ``labels`` name the caller's broker/store and trace
    endpoint in the startup line). Standalone (no ``tracer_provider``) it also sets
    up logging from ``LOG_LEVEL``/``LOG_FORMAT``; otherwise the caller has done so.

    Draining: stop accepting connections, end open SSE/WebSocket streams, let in-flight
    requests finish (up to ``SHUTDOWN_GRACE_SECONDS``), stop the results consumer, then close
    what this call opened.
    """
    from orchestrator_telemetry import (
        TelemetrySettings,
        TracingBroker,
        setup_logging,
        setup_telemetry,
    )

    env = os.environ if environ is None else environ
    telemetry = None
    traces = labels[1] if labels else "(caller's tracer provider)"
    if tracer_provider is None:
        # Standalone service: this call owns the process's logging and tracing setup.
        setup_logging(settings.log_level, "json" if settings.log_format == "json" else "plain")
        telemetry_settings = TelemetrySettings.from_env(env, default_service_name=settings.app_id)
        telemetry = setup_telemetry(telemetry_settings)
        tracer_provider = telemetry.tracer_provider
        traces = telemetry_settings.endpoint_for_log

    owned: list[Broker | TaskStore] = []
    if broker is None or store is None:
        built_broker, built_store, backend = build_resources(settings)
        if broker is None:
            broker = TracingBroker(built_broker, tracer_provider=tracer_provider)
            owned.append(broker)
            to_check: Broker | None = built_broker
        else:
            await built_broker.close()
            to_check = None
        if store is None:
            store = built_store
            owned.append(store)
        else:
            await built_store.close()
    else:
        backend = labels[0] if labels else "caller's"
        to_check = None  # a caller's broker is the caller's to check (launch's `run` does)
    try:
        # A too-old Redis stops startup, in one line.
        await check_supported_server(to_check)
    except BrokerError:
        for resource in owned:
            await resource.close()
        if telemetry is not None:
            await telemetry.aclose()
        raise

    app = create_app(
        settings, broker=broker, store=store, tracer_provider=tracer_provider, metrics=metrics
    )
    runner = ApiRunner(
        app,
        access_log=log if settings.log_level == "DEBUG" else None,
        shutdown_timeout=settings.shutdown_grace_seconds,
        handle_signals=False,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host or settings.host, settings.port if port is None else port)
        await site.start()
        bound_host, bound_port = _bound(runner, host or settings.host)
        url = f"http://{bound_host}:{bound_port}"
        auth = (
            "disabled (single tenant 'default')"
            if settings.auth_disabled
            else f"{len({t for t, _ in settings.api_keys})} tenant(s)"
        )
        limits = ",".join(f"{t}={r}" for t, r in settings.rate_limits.items()) or "none"
        log.info(
            "%s listening on %s; broker and store: %s (tasks stream %r, results stream %r, "
            "ttl %gs); traces: %s; auth: %s; rate limits: %s",
            settings.app_id,
            url,
            backend,
            settings.stream,
            settings.results_stream,
            settings.cache_ttl_seconds,
            traces,
            auth,
            limits,
        )
        await _warn_if_unreachable(broker, store)
        if telemetry is not None:
            _tune_gc()  # standalone: this process is the API's alone
        if on_started is not None:
            on_started(url)
        await stop.wait()
        log.info("%s draining (grace %gs)", settings.app_id, settings.shutdown_grace_seconds)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        for resource in owned:
            try:
                await resource.close()
            except Exception:
                log.warning("closing %r failed", resource, exc_info=True)
        if telemetry is not None:
            await telemetry.aclose()
        log.info("%s stopped", settings.app_id)


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections for the serving process; call once set up.

    What is alive after startup (modules, app, clients) is frozen out of the collector's
    sight, and the youngest generation is collected every 10,000 net allocations instead of
    700: a busy API allocates that in a few milliseconds (objects per request: the request,
    its headers, futures, the record, the message), and every collection walked them all.
    Cycles are still collected, in larger batches. (The worker service does the same.)
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


async def _warn_if_unreachable(broker: Broker, store: TaskStore, timeout: float = 2.0) -> None:
    """Say so at startup when a dependency does not answer; keep serving (``/health`` is 503
    and submissions get 503 until it is back)."""
    for name, ping in (("broker", broker.ping), ("store", store.ping)):
        try:
            async with asyncio.timeout(timeout):
                await ping()
        except Exception as exc:
            log.warning("%s is not reachable yet (%s); serving anyway", name, exc or type(exc))


def _bound(runner: web.AppRunner, host: str) -> tuple[str, int]:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = str(address[0])
            return (f"[{bound}]" if ":" in bound else bound), int(address[1])
    return host, 0
