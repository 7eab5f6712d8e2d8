"""Our aiohttp server middleware records the spans the contrib instrumentation records.

``instrument_app`` is our own middleware because it costs much less per request than
opentelemetry-instrumentation-aiohttp-server (a dev dependency, kept for this test). Here
both serve the same app over loopback, each with its own tracer provider, and get the same
requests; their spans must agree on name, kind, attributes, status and exception events, up
to the differences listed in ``ALLOWED`` (each one deliberate, and said why).

The contrib package is run with the stable HTTP conventions (``OTEL_SEMCONV_STABILITY_OPT_IN
=http``), the ones ours follow; by default it still records the old ``http.method`` names.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.instrumentation import _semconv
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.sdk.trace import ReadableSpan

from orchestrator_telemetry import instrument_app
from tests.telemetry.conftest import SpanRecorder

#: What we record differently from the contrib package, on purpose.
ALLOWED: dict[str, str] = {
    # The query string may carry credentials (``?api_key=``); the contrib package redacts
    # only a fixed list of AWS/Azure signature keys. Ours never records it.
    "url.query": "contrib only",
    # Recommended for server spans by the HTTP conventions; the contrib package leaves it out.
    "client.address": "ours only",
}
#: Where no route matched (404, 405) the contrib package records ``http.route=""``; ours
#: leaves the attribute out, as the conventions ask (set it only when there is a route), so
#: that unmatched requests do not share one empty-route series.
EMPTY_ROUTE = ("http.route", "")

HOST = "api.example.test:8443"
USER_AGENT = "compare-test/1.0"


async def _task(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["task_id"]})


async def _list(request: web.Request) -> web.Response:
    return web.json_response({"q": request.query.get("q")})


async def _create(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({}, status=201)


async def _refused(request: web.Request) -> web.Response:
    raise web.HTTPUnprocessableEntity(text="no")


async def _conflict(request: web.Request) -> web.Response:
    return web.json_response({}, status=409)


async def _unavailable(request: web.Request) -> web.Response:
    return web.json_response({}, status=503)


async def _server_error(request: web.Request) -> web.Response:
    raise web.HTTPBadGateway(text="upstream")


async def _crash(request: web.Request) -> web.Response:
    raise RuntimeError("handler failed")


def _routes(app: web.Application) -> web.Application:
    app.router.add_get("/v1/tasks/{task_id}", _task)
    app.router.add_get("/v1/tasks", _list)
    app.router.add_post("/v1/tasks", _create)
    app.router.add_get("/refused", _refused)
    app.router.add_get("/conflict", _conflict)
    app.router.add_get("/unavailable", _unavailable)
    app.router.add_get("/server-error", _server_error)
    app.router.add_get("/crash", _crash)
    return app


#: (method, path and query) of every request, sent to both servers in this order.
REQUESTS: list[tuple[str, str]] = [
    ("GET", "/v1/tasks/t-123"),
    ("GET", "/v1/tasks/t-456?verbose=1&api_key=secret"),
    ("GET", "/v1/tasks?q=a%20b&limit=5"),
    ("POST", "/v1/tasks"),
    ("GET", "/no/such/path"),
    ("DELETE", "/v1/tasks/t-123"),  # 405: the resource matches, the method does not
    ("PURGE", "/v1/tasks/t-123"),  # a method the conventions do not name
    ("GET", "/refused"),
    ("GET", "/conflict"),
    ("GET", "/unavailable"),
    ("GET", "/server-error"),
    ("GET", "/crash"),
]


@pytest.fixture
def stable_http_semconv(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The contrib package reads its conventions mode once per process: make it re-read."""
    stability = _semconv._OpenTelemetrySemanticConventionStability
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    monkeypatch.setattr(stability, "_initialized", False)
    yield
    stability._initialized = False  # the next user reads its own environment


def _contrib_app(provider: Any) -> web.Application:
    instrumentor = AioHttpServerInstrumentor()
    with warnings.catch_warnings():
        # It subclasses web.Application, which aiohttp discourages with a warning.
        warnings.simplefilter("ignore", DeprecationWarning)
        instrumentor.instrument(tracer_provider=provider)
    try:
        app = web.Application()  # the instrumented subclass, with the contrib middleware
    finally:
        instrumentor.uninstrument()
    return _routes(app)


def _our_app(provider: Any) -> web.Application:
    app = _routes(web.Application())
    instrument_app(app, provider)
    return app


async def _send_all(server: TestServer) -> None:
    headers = {"Host": HOST, "User-Agent": USER_AGENT}
    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as session:
        for method, target in REQUESTS:
            url = server.make_url("/").join(aiohttp.client.URL(target))
            async with session.request(method, url, headers=headers, data=b"") as response:
                await response.read()


def _view(span: ReadableSpan) -> dict[str, Any]:
    """What the two must agree on, allowed differences left out."""
    attributes = {
        k: v
        for k, v in (span.attributes or {}).items()
        if k not in ALLOWED and (k, v) != EMPTY_ROUTE
    }
    return {
        "name": span.name,
        "kind": span.kind,
        "attributes": attributes,
        "status": (span.status.status_code, span.status.description),
        "events": [
            (
                event.name,
                {k: v for k, v in (event.attributes or {}).items() if k != "exception.stacktrace"},
            )
            for event in span.events
        ],
    }


@pytest.fixture
async def both(stable_http_semconv: None) -> list[tuple[ReadableSpan, ReadableSpan]]:
    ours, contrib = SpanRecorder(), SpanRecorder()
    try:
        for app in (_our_app(ours.provider), _contrib_app(contrib.provider)):
            async with TestServer(app) as server:
                await _send_all(server)
        assert len(ours.spans) == len(contrib.spans) == len(REQUESTS)
        return list(zip(ours.spans, contrib.spans, strict=True))
    finally:
        ours.provider.shutdown()
        contrib.provider.shutdown()


@pytest.mark.parametrize("index", range(len(REQUESTS)), ids=[" ".join(r) for r in REQUESTS])
async def test_our_server_span_is_the_contrib_one(
    both: list[tuple[ReadableSpan, ReadableSpan]], index: int
) -> None:
    ours, contrib = both[index]
    mine, theirs = _view(ours), _view(contrib)
    assert mine["attributes"] == theirs["attributes"], sorted(
        set(mine["attributes"].items()) ^ set(theirs["attributes"].items())
    )
    assert mine == theirs


async def test_the_allowed_differences_are_the_only_ones(
    both: list[tuple[ReadableSpan, ReadableSpan]],
) -> None:
    ours, contrib = both[1]  # a query string and a known client
    assert ours.attributes is not None
    assert contrib.attributes is not None
    assert "url.query" not in ours.attributes
    assert contrib.attributes["url.query"] == "verbose=1&api_key=secret"
    assert "client.address" not in contrib.attributes
    assert ours.attributes["client.address"] == "127.0.0.1"


async def test_where_no_route_matched_ours_records_no_empty_route(
    both: list[tuple[ReadableSpan, ReadableSpan]],
) -> None:
    for index, (_, target) in enumerate(REQUESTS):
        if target == "/no/such/path":
            ours, contrib = both[index]
    assert ours.attributes is not None
    assert contrib.attributes is not None
    assert contrib.attributes["http.route"] == ""
    assert "http.route" not in ours.attributes
