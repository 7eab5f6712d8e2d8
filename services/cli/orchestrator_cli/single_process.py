"""``ai-orchestrator run``: the API and a worker in one process, sharing one broker and store.

The only module that imports both services.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from orchestrator_api import build_broker, build_store
from orchestrator_api import service as api_service
from orchestrator_api.app import backend_label
from orchestrator_api.metrics import ApiMetrics
from orchestrator_telemetry import TelemetrySettings, process_context
from orchestrator_telemetry.runtime import closing, observability, traced_broker
from orchestrator_worker import Worker
from orchestrator_worker.metrics import WorkerMetrics
from orchestrator_worker.providers import registry_from_env

from .launch import UsageError, api_settings, worker_settings

__all__ = ["run_single_process"]

log = logging.getLogger("orchestrator_api")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def run_single_process(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
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
    api = api_settings(env, host=host, port=args.port)
    worker_env = {k: v for k, v in env.items() if k != "REDIS_URI"}
    if api.redis_url is not None:
        worker_env["REDIS_URI"] = api.redis_url
    settings = worker_settings(worker_env, concurrency=args.concurrency)
    telemetry_settings = TelemetrySettings.from_env(env, default_service_name=api.app_id)

    async with contextlib.AsyncExitStack() as resources:
        telemetry = await resources.enter_async_context(
            observability(
                telemetry_settings,
                log_level=api.log_level,
                log_format="json" if api.log_format == "json" else "plain",
            )
        )
        tracer_provider = telemetry.tracer_provider
        broker = await resources.enter_async_context(
            traced_broker(build_broker(api), tracer_provider)
        )
        store = await resources.enter_async_context(closing(build_store(api)))
        providers = await resources.enter_async_context(
            closing(
                registry_from_env(
                    env, default_model=settings.default_model, tracer_provider=tracer_provider
                )
            )
        )
        # One registry: GET /metrics of the API shows the worker's series too.
        shared = CollectorRegistry()
        worker = Worker(
            broker,
            settings,
            providers=providers,
            delivery_context=process_context,
            metrics=WorkerMetrics(shared, max_label_values=settings.metrics_max_label_values),
        )
        if api.auth_disabled:
            log.warning(
                "authentication is OFF (no API_KEYS): every request acts as tenant 'default'; "
                "listening on %s only",
                host,
            )
        backend = backend_label(api)
        log.info(
            "single-process mode: API + worker (concurrency %d) on %s; traces: %s",
            settings.concurrency,
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
                tracer_provider=tracer_provider,
                stop=stop,
                environ=env,
                metrics=ApiMetrics(shared, max_label_values=api.metrics_max_label_values),
                labels=(backend, telemetry_settings.endpoint_for_log),
            )
        finally:
            stop.set()
            worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await worker_task
            stopper.cancel()


async def _stop_worker_when(stop: asyncio.Event, worker: Worker) -> None:
    """Start the worker's graceful stop as soon as the API starts draining."""
    await stop.wait()
    worker.stop()
