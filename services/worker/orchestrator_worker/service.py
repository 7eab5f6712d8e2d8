"""The worker as a process: ``serve(settings)`` wires broker, telemetry, logging and signals.

``python -m orchestrator_worker`` runs it with settings from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterable, Mapping

from opentelemetry import trace

from orchestrator_broker import Broker
from orchestrator_broker.redis_settings import RedisSettings
from orchestrator_broker.redis_streams import RedisStreamsBroker, check_supported_server
from orchestrator_settings.loop import loop_name, run
from orchestrator_telemetry import (
    TelemetrySettings,
    TracingBroker,
    process_context,
)
from orchestrator_telemetry.metrics_http import MetricsServer, start_metrics_server
from orchestrator_telemetry.runtime import closing, observability, traced_broker

from .config import WorkerSettings
from .errors import ConfigError
from .metrics import WorkerMetrics
from .providers import ProviderRegistry, default_registry
from .worker import Worker, check_settings

log = logging.getLogger("orchestrator_worker")


def masked_redis_uri(uri: str) -> str:
    """``REDIS_URI`` fit for a log line: any password replaced by ``***``."""
    try:
        return RedisSettings.from_uri(uri).masked_url
    except ValueError:
        return "<unparseable REDIS_URI>"


def connect_broker(settings: WorkerSettings) -> Broker:
    """The Redis Streams adapter for ``REDIS_URI`` (not yet traced)."""
    return RedisStreamsBroker.from_url(
        settings.redis_uri, dead_letter_maxlen=settings.dead_letter_maxlen
    )


async def serve(
    settings: WorkerSettings,
    *,
    broker: Broker | None = None,
    providers: ProviderRegistry | None = None,
    install_signal_handlers: bool = True,
) -> None:
    """Run a worker until SIGTERM/SIGINT, then stop gracefully and release everything.

    Raises ``ConfigError`` (naming the variable) when ``DEFAULT_MODEL``, ``MODEL_ALIASES``
    or ``PROVIDER_CONCURRENCY`` do not fit the providers.

    ``broker`` (an untraced adapter) defaults to one built from ``REDIS_URI``; a broker passed
    in is wrapped for tracing but not closed. The first signal stops fetching and lets
    in-flight tasks finish within ``SHUTDOWN_GRACE_SECONDS``; a second one hands them back
    at once.
    """
    telemetry_settings = settings.telemetry or TelemetrySettings.from_env(
        {"APP_ID": settings.app_id, "JAEGER_URI": settings.jaeger_uri or ""}
    )
    async with contextlib.AsyncExitStack() as resources:
        telemetry = await resources.enter_async_context(
            observability(
                telemetry_settings, log_level=settings.log_level, log_format=settings.log_format
            )
        )
        if providers is None:
            providers = await resources.enter_async_context(
                closing(
                    default_registry(
                        settings.default_model,
                        settings=settings.providers,
                        tracer_provider=telemetry.tracer_provider,
                        echo=settings.echo_enabled,
                    )
                )
            )
        check_settings(settings, providers)
        own_broker = broker is None
        adapter = connect_broker(settings) if broker is None else broker
        traced = await resources.enter_async_context(
            traced_broker(adapter, telemetry.tracer_provider)
            if own_broker
            # A caller's broker is traced here but closed by the caller.
            else _checked(adapter, telemetry.tracer_provider)
        )
        metrics = WorkerMetrics(max_label_values=settings.metrics_max_label_values)
        worker = Worker(
            traced, settings, providers=providers, delivery_context=process_context, metrics=metrics
        )
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, _on_signal, worker, signum)
                resources.callback(loop.remove_signal_handler, signum)
        _log_startup(
            settings,
            worker,
            masked_redis_uri(settings.redis_uri) if own_broker else type(adapter).__name__,
            telemetry_settings.endpoint_for_log,
            providers.names,
        )
        tune_gc()
        server = await _serve_metrics(metrics, settings)
        if server is not None:
            resources.push_async_callback(server.close)
        await worker.run()
    log.info("worker %s stopped", worker.consumer)


@contextlib.asynccontextmanager
async def _checked(adapter: Broker, tracer_provider: trace.TracerProvider) -> AsyncIterator[Broker]:
    await check_supported_server(adapter)  # a too-old Redis stops startup, in one line
    yield TracingBroker(adapter, tracer_provider=tracer_provider)


def _log_startup(
    settings: WorkerSettings,
    worker: Worker,
    broker: str,
    traces: str,
    providers: Iterable[str],
) -> None:
    log.info(
        "worker %s consuming %s as %s/%s -> results on %s; broker %s; traces %s; "
        "concurrency %d; default model %s (providers: %s); event loop %s",
        settings.app_id,
        settings.stream,
        settings.consumer_group,
        worker.consumer,
        settings.results_stream,
        broker,
        traces,
        settings.concurrency,
        settings.default_model,
        ", ".join(providers),
        loop_name(),
    )
    log.info(
        "retries: up to %d attempt(s), backoff %g..%g s with full jitter; circuit breaker: %s; "
        "provider limits: %s; model aliases: %s; %d model price(s)",
        settings.max_attempts,
        settings.retry_base,
        settings.retry_max,
        (
            f"opens after {settings.breaker_failures} failures for {settings.breaker_cooldown:g} s"
            if settings.breaker_failures
            else "off"
        ),
        ", ".join(f"{k}={v}" for k, v in settings.provider_concurrency.items()) or "none",
        ", ".join(f"{k}={'|'.join(v)}" for k, v in settings.model_aliases.items()) or "none",
        len(settings.model_prices),
    )
    if settings.shutdown_grace >= settings.lease_seconds:
        log.warning(
            "SHUTDOWN_GRACE_SECONDS (%g) >= LEASE_SECONDS (%g): tasks still running late in a "
            "shutdown may be reclaimed by other workers while they finish",
            settings.shutdown_grace,
            settings.lease_seconds,
        )


async def _serve_metrics(metrics: WorkerMetrics, settings: WorkerSettings) -> MetricsServer | None:
    """``GET /metrics`` on ``METRICS_HOST:METRICS_PORT``. A port that cannot be bound is a
    ``ConfigError`` when ``METRICS_PORT`` was set, and a warning when it was not (several
    workers on one host: the first takes the default port)."""
    host, port = settings.metrics_address
    try:
        server = await start_metrics_server(metrics.registry, host, port)
    except OSError as exc:
        if settings.metrics_port is not None:
            raise ConfigError(
                "METRICS_PORT", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        log.warning(
            "no metrics: cannot listen on %s:%d (%s); set METRICS_PORT to choose a port",
            host,
            port,
            exc.strerror or exc,
        )
        return None
    log.info("metrics on %s", server.url)
    return server


#: Net allocations of container objects between two collections of the youngest generation.
GC_YOUNG_THRESHOLD = 100_000


def tune_gc() -> None:
    """Fewer garbage collections for a long-running service; call after startup.

    What is alive once the service is set up (modules, clients, settings) is frozen out of
    the collector's sight, and the youngest generation is collected every
    ``GC_YOUNG_THRESHOLD`` net allocations instead of 700. The count is net of every
    deallocation, old objects' too, so it measures growth: a worker in a steady state
    (tasks ending as fast as new ones start) hardly moves it. With 10,000, the bursts of a
    thousand concurrent tasks (about 56 tracked objects each, alive for the whole call)
    still set off a collection every few hundred milliseconds, each walking the 15,000 to
    56,000 objects of the calls in flight: 9-10% of the worker's CPU over 20,000 calls of
    500 ms at concurrency 1,000 (``bench concurrency --concurrency-tasks 20000``), none at
    100,000. Cyclic garbage (a few objects per task: exceptions and their tracebacks) is
    still collected, at the latest after that many net allocations: a bounded amount.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def _on_signal(worker: Worker, signum: signal.Signals) -> None:
    force = worker.stopping
    log.info(
        "%s received: %s",
        signum.name,
        "handing in-flight tasks back now" if force else "stopping gracefully",
    )
    worker.stop(force=force)


def main(environ: Mapping[str, str] | None = None) -> None:
    """Entry point: settings from the environment, then ``serve`` until a signal.

    A malformed setting exits with status 2 and one line naming the variable.
    """
    try:
        environ = os.environ if environ is None else environ
        settings = WorkerSettings.from_env(environ)
        run(serve(settings), environ)
    except ConfigError as exc:  # any setting, telemetry's included
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
