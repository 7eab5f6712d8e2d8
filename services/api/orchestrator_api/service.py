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

from orchestrator_broker import Broker
from orchestrator_settings.loop import loop_name
from orchestrator_telemetry import TelemetrySettings
from orchestrator_telemetry.runtime import observability

from .app import backend_label, create_app
from .config import ApiSettings
from .metrics import ApiMetrics
from .runner import ApiRunner, HttpLimits
from .state import STATE
from .store.protocol import TaskStore

__all__ = ["serve"]

log = logging.getLogger("orchestrator_api")


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

    Without ``broker``/``store`` the app builds them from ``REDIS_URI`` (and closes them at
    the end); a caller that passes its own keeps ownership (single-process mode shares one
    in-memory broker and store with the workers). Without ``tracer_provider`` it sets up
    logging (``LOG_LEVEL``/``LOG_FORMAT``) and telemetry from ``environ`` (``JAEGER_URI``,
    ``OTEL_*``) and flushes it at the end; otherwise the caller has done so.
    ``host``/``port`` override the settings (port 0 picks a free port; ``on_started``
    receives the base URL once listening; ``labels`` name the caller's broker/store and trace
    endpoint in the startup line).

    Draining: stop accepting connections, end open SSE/WebSocket streams, let in-flight
    requests finish (up to ``SHUTDOWN_GRACE_SECONDS``), stop the results consumer, then close
    what this call opened, in reverse order.
    """
    env = os.environ if environ is None else environ
    standalone = tracer_provider is None
    async with contextlib.AsyncExitStack() as resources:
        if standalone:
            # Standalone service: this call owns the process's logging and tracing.
            telemetry_settings = TelemetrySettings.from_env(
                env, default_service_name=settings.app_id
            )
            telemetry = await resources.enter_async_context(
                observability(
                    telemetry_settings,
                    log_level=settings.log_level,
                    log_format="json" if settings.log_format == "json" else "plain",
                )
            )
            tracer_provider = telemetry.tracer_provider
            traces = telemetry_settings.endpoint_for_log
        else:
            traces = labels[1] if labels else "(caller's tracer provider)"
        backend = labels[0] if labels and broker is not None else backend_label(settings)
        app = create_app(
            settings, broker=broker, store=store, tracer_provider=tracer_provider, metrics=metrics
        )
        await _serve_app(
            app,
            settings,
            host=host or settings.host,
            port=settings.port if port is None else port,
            stop=stop or asyncio.Event(),
            on_started=on_started,
            describe=lambda url: _startup_line(settings, url, backend, traces),
            standalone=standalone,
        )


def _startup_line(settings: ApiSettings, url: str, backend: str, traces: str) -> str:
    auth = (
        "disabled (single tenant 'default')"
        if settings.auth_disabled
        else f"{len({t for t, _ in settings.api_keys})} tenant(s)"
    )
    limits = ",".join(f"{t}={r}" for t, r in settings.rate_limits.items()) or "none"
    return (
        f"{settings.app_id} listening on {url}; broker and store: {backend} (tasks stream "
        f"{settings.stream!r}, results stream {settings.results_stream!r}, ttl "
        f"{settings.cache_ttl_seconds:g}s); traces: {traces}; auth: {auth}; "
        f"rate limits: {limits}; event loop {loop_name()}"
    )


async def _serve_app(
    app: web.Application,
    settings: ApiSettings,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_started: Callable[[str], None] | None,
    describe: Callable[[str], str],
    standalone: bool,
) -> None:
    """Run ``app`` on ``host:port`` until ``stop`` (or SIGTERM/SIGINT), then drain it."""
    runner = ApiRunner(
        app,
        limits=HttpLimits(
            header_timeout=settings.http_header_timeout_seconds,
            keepalive=settings.http_keepalive_seconds,
            max_connections=settings.http_max_connections,
        ),
        access_log=log if settings.log_level == "DEBUG" else None,
        shutdown_timeout=settings.shutdown_grace_seconds,
        handle_signals=False,
    )
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    serving = False
    try:
        await runner.setup()  # runs the app's cleanup_ctx: broker, store, results consumer
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = _bound(runner, host)
        url = f"http://{bound_host}:{bound_port}"
        log.info("%s", describe(url))
        serving = True
        state = app[STATE]
        await _warn_if_unreachable(state.broker, state.store)
        if standalone:
            _tune_gc()  # this process is the API's alone
        if on_started is not None:
            on_started(url)
        await stop.wait()
        log.info("%s draining (grace %gs)", settings.app_id, settings.shutdown_grace_seconds)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        if serving:  # a startup that failed says why in one line, and only that
            log.info("%s stopped", settings.app_id)


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections for the serving process; call once set up.

    What is alive after startup (modules, app, clients) is frozen out of the collector's
    sight, and the youngest generation is collected every 10,000 net allocations instead of
    700: a busy API allocates that in a few milliseconds (objects per request: the request,
    its headers, futures, the record, the message), and every collection walked them all.
    Cycles are still collected, in larger batches. (The worker service does the same with
    a higher threshold, ``orchestrator_worker.service.GC_YOUNG_THRESHOLD``: its calls in
    flight live for seconds and collections walking them cost it ~10% of its CPU; here
    they cost under 1%, measured with ``bench chat``.)
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
