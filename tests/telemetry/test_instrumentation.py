"""aiohttp server instrumentation: a SERVER span per request, continuing the caller's trace."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator_telemetry import current_trace_id, instrument_app
from tests.telemetry.conftest import SpanRecorder

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def whoami(request: web.Request) -> web.Response:
    return web.json_response(
        {"trace_id": current_trace_id(), "traceparent": request.headers.get("traceparent")}
    )


def make_app(recorder: SpanRecorder) -> web.Application:
    app = web.Application()
    app.router.add_get("/tasks/{task_id}", whoami)
    app.router.add_get("/healthz", whoami)
    instrument_app(app, recorder.provider, exclude_paths=["/healthz"])
    return app


async def test_server_span_continues_the_callers_trace(recorder: SpanRecorder) -> None:
    async with TestClient(TestServer(make_app(recorder))) as client:
        response = await client.get("/tasks/abc", headers={"traceparent": TRACEPARENT})
        body = await response.json()
    assert body["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    (server,) = recorder.spans
    assert server.kind is SpanKind.SERVER
    assert server.name == "GET /tasks/{task_id}"
    assert server.parent is not None
    assert trace.format_span_id(server.parent.span_id) == "b7ad6b7169203331"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/tasks/{task_id}"


async def test_a_request_without_traceparent_starts_a_trace(recorder: SpanRecorder) -> None:
    async with TestClient(TestServer(make_app(recorder))) as client:
        body = await (await client.get("/tasks/abc")).json()
    (server,) = recorder.spans
    assert server.parent is None
    assert server.context is not None
    assert body["trace_id"] == trace.format_trace_id(server.context.trace_id)


def test_instrumenting_an_app_leaves_web_application_unpatched(recorder: SpanRecorder) -> None:
    make_app(recorder)
    assert web.Application.__module__ == "aiohttp.web_app"


async def test_excluded_paths_get_no_span(recorder: SpanRecorder) -> None:
    async with TestClient(TestServer(make_app(recorder))) as client:
        body = await (await client.get("/healthz")).json()
    assert recorder.spans == ()
    assert body["trace_id"] is None


async def test_server_span_follows_the_http_semantic_conventions(recorder: SpanRecorder) -> None:
    async with TestClient(TestServer(make_app(recorder))) as client:
        response = await client.get("/tasks/abc?api_key=secret", headers={"User-Agent": "ua/1"})
        assert response.status == 200
        port = response.url.port
    (server,) = recorder.spans
    assert server.attributes is not None
    attributes = dict(server.attributes)
    assert attributes.pop("client.address") == "127.0.0.1"
    assert attributes == {
        "http.request.method": "GET",
        "http.route": "/tasks/{task_id}",
        "url.path": "/tasks/abc",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": port,
        "network.protocol.version": "1.1",
        "user_agent.original": "ua/1",
        "http.response.status_code": 200,
    }
    assert server.status.status_code is StatusCode.UNSET


async def failing(request: web.Request) -> web.Response:
    if request.match_info["how"] == "raise":
        raise RuntimeError("boom")
    return web.Response(status=int(request.match_info["how"]))


@pytest.mark.parametrize(
    ("how", "status", "error_type"),
    [("503", StatusCode.ERROR, "503"), ("404", StatusCode.UNSET, None)],
)
async def test_5xx_responses_are_errors_and_4xx_are_not(
    recorder: SpanRecorder, how: str, status: StatusCode, error_type: str | None
) -> None:
    app = web.Application()
    app.router.add_get("/fail/{how}", failing)
    instrument_app(app, recorder.provider)
    async with TestClient(TestServer(app)) as client:
        await client.get(f"/fail/{how}")
    (server,) = recorder.spans
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == int(how)
    assert server.attributes.get("error.type") == error_type
    assert server.status.status_code is status


async def test_an_exception_is_recorded_on_the_span(recorder: SpanRecorder) -> None:
    app = web.Application()
    app.router.add_get("/fail/{how}", failing)
    instrument_app(app, recorder.provider)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/fail/raise")).status == 500
    (server,) = recorder.spans
    assert server.attributes is not None
    assert server.attributes["error.type"] == "RuntimeError"
    assert server.status.status_code is StatusCode.ERROR
    assert [event.name for event in server.events] == ["exception"]


async def test_unknown_routes_and_methods_get_generic_span_names(recorder: SpanRecorder) -> None:
    async with TestClient(TestServer(make_app(recorder))) as client:
        await client.get("/nowhere")
        await client.request("PROPFIND", "/tasks/abc")  # a method semconv does not name
    names = sorted((span.name, dict(span.attributes or {})) for span in recorder.spans)
    assert [(name, attributes["http.request.method"]) for name, attributes in names] == [
        ("GET", "GET"),
        ("HTTP", "_OTHER"),
    ]
    assert names[1][1]["http.request.method_original"] == "PROPFIND"
