"""``ApiRunner`` with aiohttp internals it does not expect: aiohttp's own handler serves."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from orchestrator_api import runner as runner_module
from orchestrator_api.runner import ApiRunner, aiohttp_internals_problem
from tests.api.test_http_malformed import Answer, exchange


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[], Any]]:
    runners: list[ApiRunner] = []

    async def start() -> int:
        app = web.Application()
        app.router.add_get("/hello", _hello)
        runner = ApiRunner(app, access_log=None, shutdown_timeout=1.0)
        runners.append(runner)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return next(a[1] for a in runner.addresses if isinstance(a, tuple))

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def _log_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "_logged", False)


def test_the_installed_aiohttp_passes_the_probe() -> None:
    assert aiohttp_internals_problem() is None


async def test_with_the_expected_internals_a_malformed_request_is_a_problem(
    serve: Callable[[], Any],
) -> None:
    port = await serve()
    answer: Answer = await exchange(port, b"NOT A REQUEST\r\n\r\n")
    assert answer.status == 400
    assert answer.problem()["status"] == 400


def test_a_changed_handle_error_signature_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    def handle_error(self: web.RequestHandler, request: Any, status: int = 500) -> Any:
        raise AssertionError("not called")

    monkeypatch.setattr(web.RequestHandler, "handle_error", handle_error)
    assert "handle_error" in (aiohttp_internals_problem() or "")


async def test_after_a_failed_probe_aiohttp_answers_and_requests_are_served(
    serve: Callable[[], Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(runner_module, "_PROBLEM", "web.Server takes other arguments")
    with caplog.at_level(logging.INFO, logger=runner_module.__name__):
        port = await serve()
        await serve()
    assert len([r for r in caplog.records if "internals changed" in r.message]) == 1
    malformed = await exchange(port, b"NOT A REQUEST\r\n\r\n")
    assert malformed.status == 400
    assert malformed.headers["content-type"].startswith("text/plain")
    ok = await exchange(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.status == 200


class _OtherServer(web.Server):
    """As if aiohttp made a server class of its own for the app."""


async def test_a_server_of_another_kind_is_served_as_it_is(
    serve: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[web.Server] = []
    original = web.AppRunner._make_server

    async def make_server(self: web.AppRunner) -> web.Server:
        server = await original(self)
        other = _OtherServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            **server._kwargs,
        )
        made.append(other)
        return other

    monkeypatch.setattr(web.AppRunner, "_make_server", make_server)
    port = await serve()
    assert runner_module._server_problem(made[0]) is not None
    ok = await exchange(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.status == 200
    malformed = await exchange(port, b"NOT A REQUEST\r\n\r\n")
    assert malformed.headers["content-type"].startswith("text/plain")
