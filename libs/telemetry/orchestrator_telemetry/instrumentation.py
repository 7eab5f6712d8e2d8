"""Tracing for aiohttp: a SERVER span per request, a CLIENT span per outgoing request.

Server: ``instrument_app(app, tracer_provider)`` before the app starts. It adds the
``opentelemetry-instrumentation-aiohttp-server`` middleware to this one app (outermost, so it
sees every response, including problem-JSON errors from inner middlewares). The package's
``AioHttpServerInstrumentor().instrument()`` instead replaces ``web.Application`` globally
with a subclass (which aiohttp deprecates) and only affects apps created afterwards; we run
it once only to initialise the middleware's module state, then put ``web.Application`` back.
Incoming ``traceparent`` headers are honoured, so an API request joins its caller's trace.

Client: ``aiohttp.ClientSession(trace_configs=[client_trace_config(tracer_provider)])``.
It injects ``traceparent`` into outgoing requests and strips query strings (which may carry
API keys) from the URL recorded on spans.

Both use ``tracer_provider`` if given, else the global one (``setup_telemetry`` sets it).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable

import aiohttp
import yarl
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import trace
from opentelemetry.instrumentation import aiohttp_server
from opentelemetry.instrumentation.aiohttp_client import create_trace_config

from .errors import TelemetryError

_init_lock = threading.Lock()


def _initialise_server_instrumentation() -> None:
    """Set the package's module state (excluded URLs, metrics) without patching aiohttp."""
    with _init_lock:
        if getattr(aiohttp_server, "_excluded_urls", None) is not None:
            return
        instrumentor = aiohttp_server.AioHttpServerInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            return  # someone instrumented globally already; their state serves us too
        with warnings.catch_warnings():
            # instrument() subclasses web.Application, which aiohttp warns about.
            warnings.simplefilter("ignore", DeprecationWarning)
            instrumentor.instrument()
        if not instrumentor.is_instrumented_by_opentelemetry:
            # instrument() declines (with a log line) when aiohttp's version is unsupported.
            raise TelemetryError(
                "opentelemetry-instrumentation-aiohttp-server refused this aiohttp"
            )
        instrumentor.uninstrument()  # restores web.Application; the module state stays


def server_middleware(
    tracer_provider: trace.TracerProvider | None = None,
    *,
    exclude_paths: Iterable[str] = (),
) -> Middleware:
    """The tracing middleware; requests to ``exclude_paths`` (e.g. health checks) get no span."""
    _initialise_server_instrumentation()
    traced: Middleware = aiohttp_server.create_aiohttp_middleware(tracer_provider=tracer_provider)
    excluded = frozenset(exclude_paths)
    if not excluded:
        return traced

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in excluded:
            return await handler(request)
        return await traced(request, handler)

    return middleware


def instrument_app(
    app: web.Application,
    tracer_provider: trace.TracerProvider | None = None,
    *,
    exclude_paths: Iterable[str] = (),
) -> None:
    """Trace every request to ``app`` (call before the app starts; its middlewares freeze)."""
    app.middlewares.insert(0, server_middleware(tracer_provider, exclude_paths=exclude_paths))


def _strip_query(url: yarl.URL) -> str:
    return str(url.with_query(None).with_user(None))


def client_trace_config(
    tracer_provider: trace.TracerProvider | None = None,
) -> aiohttp.TraceConfig:
    """For ``ClientSession(trace_configs=[...])``: CLIENT spans and ``traceparent`` injection."""
    return create_trace_config(url_filter=_strip_query, tracer_provider=tracer_provider)
