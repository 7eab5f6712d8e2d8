"""What ``ai-orchestrator api|worker|run`` start, once the environment is merged.

Configuration errors surface as ``UsageError`` so the CLI prints one line naming the
variable and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Mapping

import attrs
from prometheus_client import CollectorRegistry

from orchestrator_broker import BrokerError
from orchestrator_broker.redis_streams import check_supported_server
from orchestrator_telemetry import (
    TelemetryConfigError,
    TelemetrySettings,
    TracingBroker,
    process_context,
    setup_logging,
    setup_telemetry,
)
from orchestrator_worker import service as worker_service
from orchestrator_worker.config import WorkerSettings
from orchestrator_worker.metrics import WorkerMetrics
from orchestrator_worker.providers import registry_from_env
from orchestrator_worker.worker import Worker

from . import service as api_service
from .config import ApiSettings, ConfigError
from .metrics import ApiMetrics

log = logging.getLogger("orchestrator_api")

_CONFIG_ERRORS = (ConfigError, TelemetryConfigError, BrokerError, ValueError)


class UsageError(Exception):
    """A configuration the CLI refuses: printed as one line, exit status 2."""


def launch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the ``api``, ``worker`` or ``run`` command until a signal stops it."""
    try:
        if args.command == "api":
            api = _api_settings(environ, host=args.host, port=args.port)
            asyncio.run(api_service.serve(api, environ=environ))
        elif args.command == "worker":
            worker = _worker_settings(environ, concurrency=args.concurrency)
            asyncio.run(worker_service.serve(worker))
        elif args.command == "run":
            asyncio.run(_run_single_process(args, environ))
        else:  # argparse only lets the known commands through
            raise UsageError(f"unknown command {args.command!r}")
    except _CONFIG_ERRORS as exc:
        raise UsageError(str(exc)) from None
    return 0


def _api_settings(environ: Mapping[str, str], *, host: str | None, port: int | None) -> ApiSettings:
    settings = ApiSettings.from_env(environ)
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")
    return attrs.evolve(
        settings,
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
    )


def _worker_settings(environ: Mapping[str, str], *, concurrency: int | None) -> WorkerSettings:
    settings = WorkerSettings.from_env(environ)
    if concurrency is not None:
        if concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
        settings = attrs.evolve(settings, concurrency=concurrency)
    return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _run_single_process(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """The API and a worker in one process, sharing one broker and one store.

    In-memory unless ``REDIS_URI`` is set. Binds 127.0.0.1 unless told otherwise; without
    API keys it runs with authentication off, which it allows only on a loopback address.
    """
    env = dict(environ)
    env.setdefault("APP_ID", "ai-orchestrator")
    host = args.host or "127.0.0.1"
    no_keys = not env.get("API_KEYS", "").strip() and not env.get("API_KEYS_FILE", "").strip()
    if no_keys and not env.get("AUTH_DISABLED", "").strip():
        if not _is_loopback(host):
            raise UsageError(
                f"refusing to serve {host} without API keys: set API_KEYS (or AUTH_DISABLED=true)"
            )
        env["AUTH_DISABLED"] = "true"
    api = _api_settings(env, host=host, port=args.port)
    worker_env = {k: v for k, v in env.items() if k != "REDIS_URI"}
    if api.redis_url is not None:
        worker_env["REDIS_URI"] = api.redis_url
    worker_settings = _worker_settings(worker_env, concurrency=args.concurrency)

    setup_logging(api.log_level, "json" if api.log_format == "json" else "plain")
    telemetry_settings = TelemetrySettings.from_env(env, default_service_name=api.app_id)
    telemetry = setup_telemetry(telemetry_settings)
    adapter, store, backend = api_service.build_resources(api)
    try:
        await check_supported_server(adapter)  # a too-old Redis stops startup, in one line
    except BrokerError:
        await adapter.close()
        await store.close()
        await telemetry.aclose()
        raise
    broker = TracingBroker(adapter, tracer_provider=telemetry.tracer_provider)
    registry = registry_from_env(
        env,
        default_model=worker_settings.default_model,
        tracer_provider=telemetry.tracer_provider,
    )
    # One registry: GET /metrics of the API shows the worker's series too.
    shared = CollectorRegistry()
    worker = Worker(
        broker,
        worker_settings,
        providers=registry,
        delivery_context=process_context,
        metrics=WorkerMetrics(shared),
    )
    if api.auth_disabled:
        log.warning(
            "authentication is OFF (no API_KEYS): every request acts as tenant 'default'; "
            "listening on %s only",
            host,
        )
    log.info(
        "single-process mode: API + worker (concurrency %d) on %s; traces: %s",
        worker_settings.concurrency,
        backend,
        telemetry_settings.endpoint_for_log,
    )
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(), name="worker")
    stopper = asyncio.create_task(_stop_worker_when(stop, worker), name="stop-worker")
    try:
        await api_service.serve(
            api,
            broker=broker,
            store=store,
            host=host,
            tracer_provider=telemetry.tracer_provider,
            stop=stop,
            environ=env,
            metrics=ApiMetrics(shared),
            labels=(backend, telemetry_settings.endpoint_for_log),
        )
    finally:
        stop.set()
        worker.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        stopper.cancel()
        await registry.close()
        await broker.close()
        await store.close()
        await telemetry.aclose()


async def _stop_worker_when(stop: asyncio.Event, worker: Worker) -> None:
    """Start the worker's graceful stop as soon as the API starts draining."""
    await stop.wait()
    worker.stop()
