"""Tracing for aiohttp servers: a SERVER span per request.

Server: ``instrument_app(app, tracer_provider)`` before the app starts adds our own server
middleware to this one app (outermost, so it sees every response, including problem-JSON
errors from inner middlewares). Its spans follow the HTTP server semantic conventions: name
``METHOD /route`` (``http.route`` is the matched resource, e.g. ``/v1/tasks/{task_id}``),
``http.request.method``, ``url.path``, ``url.scheme``, ``http.route``,
``http.response.status_code``, ``server.address``/``server.port`` (from ``Host``),
``client.address``, ``network.protocol.version``, ``user_agent.original``; 5xx responses and
exceptions get error status and ``error.type``. The query string is not recorded (it may
carry credentials). An incoming ``traceparent`` (and ``baggage``) is continued; the W3C
propagators are used whatever ``OTEL_PROPAGATORS`` says (see ``propagation``).

When the provider records nothing (``ContextOnlyTracerProvider``: tracing off), the middleware
only makes the request's span context current, so handlers still see a trace id; that costs
a few microseconds instead of the contrib middleware's per-request attribute collection and
environment lookups (about 30% of the API's CPU).

Its spans are held to what opentelemetry-instrumentation-aiohttp-server records for the same
requests (``tests/telemetry/test_instrumentation_vs_contrib.py``), but for two deliberate
differences: no ``url.query`` and no empty ``http.route`` when nothing matched.

No client instrumentation is offered: the services' only outgoing HTTP calls are the
providers', whose GenAI span is the CLIENT span (``orchestrator_worker.providers``).

It uses ``tracer_provider`` if given, else the global one (``setup_telemetry`` sets it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from .config import package_version
from .context_only import ContextOnlyTracer
from .propagation import extract_context

__all__ = ["instrument_app", "server_middleware"]

_TRACER_NAME: Final = "orchestrator_telemetry.aiohttp_server"
#: The methods the semantic conventions name; any other is recorded as ``_OTHER``.
_KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_EMPTY: Final = Context()


def _parent(request: web.BaseRequest) -> Context:
    """The caller's context from ``traceparent``/``baggage``, else an empty one (a root)."""
    headers = request.headers
    if "traceparent" in headers or "baggage" in headers:
        return extract_context(headers, context=_EMPTY)
    return _EMPTY


def _route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def _server_address(request: web.BaseRequest) -> tuple[str, int]:
    host = request.host
    if host.startswith("["):  # [::1]:8080
        name, _, rest = host[1:].partition("]")
        port = rest[1:]
    else:
        name, sep, port = host.rpartition(":")
        if not sep:
            name, port = host, ""
    if port.isdigit():
        return name, int(port)
    return name, 443 if request.scheme == "https" else 80


def _request_attributes(request: web.Request, method: str, route: str | None) -> dict[str, Any]:
    address, port = _server_address(request)
    version = request.version
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "server.address": address,
        "server.port": port,
        "network.protocol.version": f"{version.major}.{version.minor}",
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = request.method
    if route is not None:
        attributes["http.route"] = route
    if (remote := request.remote) is not None:
        attributes["client.address"] = remote
    if (agent := request.headers.get("User-Agent")) is not None:
        attributes["user_agent.original"] = agent
    return attributes


def _set_status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # 4xx are the client's errors, not the server's (semconv)
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


def _recording_middleware(tracer: trace.Tracer, excluded: frozenset[str]) -> Middleware:
    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in excluded:
            return await handler(request)
        method = request.method if request.method in _KNOWN_METHODS else "_OTHER"
        route = _route(request)
        prefix = "HTTP" if method == "_OTHER" else method
        parent = _parent(request)
        span = tracer.start_span(
            f"{prefix} {route}" if route is not None else prefix,
            context=parent,
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        # Attributes only for spans that record (most are sampled out). The configurable
        # samplers are the built-in ones, which never read attributes, so setting them after
        # the start gives the same decision and the same span.
        if span.is_recording():
            span.set_attributes(_request_attributes(request, method, route))
        token = context_api.attach(trace.set_span_in_context(span, parent))
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _set_status(span, exc.status)
            if exc.status >= 500:
                span.record_exception(exc)
            raise
        except Exception as exc:
            span.record_exception(exc)
            # As the contrib instrumentation words it; the message is in the exception event.
            name = type(exc).__qualname__
            span.set_attribute("error.type", name)
            span.set_status(Status(StatusCode.ERROR, f"Non-integer HTTP status: {name}"))
            raise
        else:
            _set_status(span, response.status)
            return response
        finally:
            context_api.detach(token)
            span.end()

    return traced


def _context_only_middleware(tracer: ContextOnlyTracer, excluded: frozenset[str]) -> Middleware:
    span_context = tracer.span_context
    attach, detach = context_api.attach, context_api.detach
    in_context = trace.set_span_in_context

    @web.middleware
    async def current_trace(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in excluded:
            return await handler(request)
        parent = _parent(request)
        token = attach(in_context(NonRecordingSpan(span_context(parent)), parent))
        try:
            return await handler(request)
        finally:
            detach(token)

    return current_trace


def server_middleware(
    tracer_provider: trace.TracerProvider | None = None,
    *,
    exclude_paths: Iterable[str] = (),
) -> Middleware:
    """The tracing middleware; requests to ``exclude_paths`` (e.g. health checks) get no span."""
    provider = tracer_provider or trace.get_tracer_provider()
    tracer = provider.get_tracer(_TRACER_NAME, package_version())
    excluded = frozenset(exclude_paths)
    if isinstance(tracer, ContextOnlyTracer):
        return _context_only_middleware(tracer, excluded)
    return _recording_middleware(tracer, excluded)


def instrument_app(
    app: web.Application,
    tracer_provider: trace.TracerProvider | None = None,
    *,
    exclude_paths: Iterable[str] = (),
) -> None:
    """Trace every request to ``app`` (call before the app starts; its middlewares freeze)."""
    app.middlewares.insert(0, server_middleware(tracer_provider, exclude_paths=exclude_paths))
