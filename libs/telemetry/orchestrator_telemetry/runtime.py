"""The resources every service process opens the same way, as async context managers.

Each resource is opened and closed in one place: the worker and ``run`` mode enter them in an
``AsyncExitStack``, the API as one aiohttp ``cleanup_ctx`` each (``cleanup_ctx`` below adapts
a context manager), so they close in the reverse order they opened, whatever fails, and
adding a resource touches one place.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from opentelemetry import trace

from orchestrator_broker import Broker
from orchestrator_broker.redis_streams import check_supported_server

from .config import TelemetrySettings
from .logs import LogFormat, setup_logging
from .setup import Telemetry, setup_telemetry
from .tracing_broker import TracingBroker

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["cleanup_ctx", "closing", "observability", "traced_broker"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Closable(Protocol):
    async def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)


@contextlib.asynccontextmanager
async def observability(
    settings: TelemetrySettings, *, log_level: str, log_format: LogFormat
) -> AsyncIterator[Telemetry]:
    """The process's logging and tracing; spans are flushed when it closes."""
    setup_logging(log_level, log_format)
    telemetry = setup_telemetry(settings)
    try:
        yield telemetry
    finally:
        await telemetry.aclose()


@contextlib.asynccontextmanager
async def traced_broker(
    adapter: Broker, tracer_provider: trace.TracerProvider | None
) -> AsyncIterator[TracingBroker]:
    """``adapter`` checked (a Redis too old for it stops startup, in one line) and traced;
    closed when done, even when the check fails."""
    traced = TracingBroker(adapter, tracer_provider=tracer_provider)
    try:
        await check_supported_server(adapter)
        yield traced
    finally:
        await traced.close()


@contextlib.asynccontextmanager
async def closing(resource: _C) -> AsyncIterator[_C]:
    """``resource``, closed when done; a failure to close is logged, not raised, so the
    resources opened before it still close."""
    try:
        yield resource
    finally:
        try:
            await resource.close()
        except Exception:
            log.warning("closing %r failed", resource, exc_info=True)


def cleanup_ctx(
    key: web.AppKey[T],
    open_resource: Callable[[web.Application], contextlib.AbstractAsyncContextManager[T]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` entry that opens a resource at startup, keeps it under
    ``key`` while the app runs, and closes it at cleanup (in reverse order of the entries)."""

    async def resource_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_resource(app) as resource:
            app[key] = resource
            yield

    return resource_ctx
