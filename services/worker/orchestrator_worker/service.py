"""The worker as a process: ``serve(settings)`` wires broker, telemetry, logging and signals.

``python -m orchestrator_worker`` runs it with settings from the environment.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping

from orchestrator_broker import Broker, BrokerError
from orchestrator_broker.redis_settings import RedisSettings
from orchestrator_broker.redis_streams import RedisStreamsBroker, check_supported_server
from orchestrator_telemetry import (
    TelemetryConfigError,
    TelemetrySettings,
    TracingBroker,
    process_context,
    setup_logging,
    setup_telemetry,
)
from orchestrator_telemetry.metrics_http import MetricsServer, start_metrics_server

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
    setup_logging(settings.log_level, settings.log_format)
    telemetry_settings = settings.telemetry or TelemetrySettings.from_env(
        {"APP_ID": settings.app_id, "JAEGER_URI": settings.jaeger_uri or ""}
    )
    telemetry = setup_telemetry(telemetry_settings)
    own_providers = providers is None
    registry = providers or default_registry(
        settings.default_model,
        settings=settings.providers,
        tracer_provider=telemetry.tracer_provider,
    )
    try:
        check_settings(settings, registry)
    except ConfigError:
        if own_providers:
            await registry.close()
        await telemetry.aclose()
        raise
    own_broker = broker is None
    adapter = broker if broker is not None else connect_broker(settings)
    try:
        await check_supported_server(adapter)  # a too-old Redis stops startup, one line
    except BrokerError:
        if own_providers:
            await registry.close()
        if own_broker:
            await adapter.close()
        await telemetry.aclose()
        raise
    traced = TracingBroker(adapter, tracer_provider=telemetry.tracer_provider)
    metrics = WorkerMetrics()
    worker = Worker(
        traced, settings, providers=registry, delivery_context=process_context, metrics=metrics
    )

    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signal_handlers:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, worker, signum)
            installed.append(signum)

    log.info(
        "worker %s consuming %s as %s/%s -> results on %s; broker %s; traces %s; "
        "concurrency %d; default model %s (providers: %s)",
        settings.app_id,
        settings.stream,
        settings.consumer_group,
        worker.consumer,
        settings.results_stream,
        masked_redis_uri(settings.redis_uri) if own_broker else type(adapter).__name__,
        telemetry_settings.endpoint_for_log,
        settings.concurrency,
        settings.default_model,
        ", ".join(registry.names),
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
    tune_gc()
    server: MetricsServer | None = None
    try:
        server = await _serve_metrics(metrics, settings)
        await worker.run()
    finally:
        if server is not None:
            await server.close()
        for signum in installed:
            loop.remove_signal_handler(signum)
        if own_providers:
            await registry.close()
        if own_broker:
            await traced.close()
        await telemetry.aclose()
        log.info("worker %s stopped", worker.consumer)


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


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running service; call after startup.

    What is alive once the service is set up (modules, clients, settings) is frozen out of
    the collector's sight, and the youngest generation is collected every 10,000 net
    allocations instead of 700: a thousand concurrent tasks allocate that much in
    milliseconds, and the default thresholds cost a busy worker ~8% of its time (measured
    with 1,000 concurrent echo tasks). Cycles are still collected, just in larger batches.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


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
        settings = WorkerSettings.from_env(os.environ if environ is None else environ)
        asyncio.run(serve(settings))
    except (ConfigError, TelemetryConfigError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
