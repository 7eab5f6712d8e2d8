"""Requests aiohttp's HTTP parser rejects get problem JSON too, over a real socket.

Raw bytes go to ``serve`` over loopback: no client library would send these requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import orjson
import pytest
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from orchestrator_api.config import ApiSettings
from orchestrator_api.problems import PROBLEM_CONTENT_TYPE, TYPE_TOO_LARGE, malformed_request
from orchestrator_api.runner import ApiRunner
from tests.api.conftest import API_KEYS
from tests.api.test_http_service import running

HANG = 10.0  # hang guard only
#: A token the malformed part of each request carries: the answer must not quote it back.
MARKER = "zq7marker"


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """The port of the API, served by ``serve`` on 127.0.0.1 until the test ends."""
    async with running(ApiSettings(api_keys=API_KEYS)) as (url, _):
        yield int(url.rsplit(":", 1)[1])


class Answer:
    """A raw HTTP response: status line, lower-cased headers, body."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.version, status, self.reason = status_line.split(" ", 2)
        self.status = int(status)
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }

    def problem(self) -> dict[str, Any]:
        assert self.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert int(self.headers["content-length"]) == len(self.body)
        problem = orjson.loads(self.body)
        assert isinstance(problem, dict)
        assert problem["status"] == self.status
        assert isinstance(problem["title"], str)
        assert problem["title"]
        assert isinstance(problem["detail"], str)
        assert problem["detail"]
        return problem


async def exchange(port: int, request: bytes) -> Answer:
    """Send ``request`` in one write; the answer, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(HANG):
            # read() returns at EOF only: the server closed the connection after its answer.
            return Answer(await reader.read())
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def submission(headers: bytes, body: bytes) -> bytes:
    return (
        b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer key-acme\r\n"
        b"Content-Type: application/json\r\n" + headers + b"\r\n" + body
    )


async def test_a_malformed_request_line_is_a_400_problem_and_the_connection_closes(
    port: int,
) -> None:
    answer = await exchange(port, f"GET /health HTTP/9.{MARKER}\r\nHost: x\r\n\r\n".encode())

    assert answer.status == 400
    problem = answer.problem()
    assert problem["title"] == "Bad Request"
    assert problem["type"] == "about:blank"
    assert "instance" not in problem  # no request was parsed
    assert MARKER not in answer.body.decode()


async def test_garbage_instead_of_a_request_is_a_400_problem(port: int) -> None:
    answer = await exchange(port, f"{MARKER}\x01\x02 nonsense\r\n\r\n".encode())

    assert answer.status == 400
    answer.problem()
    assert MARKER not in answer.body.decode()


async def test_an_invalid_header_name_is_a_400_problem(port: int) -> None:
    request = f"GET /health HTTP/1.1\r\nHost: x\r\nX {MARKER}: v\r\n\r\n".encode()

    answer = await exchange(port, request)

    assert answer.status == 400
    answer.problem()
    assert MARKER not in answer.body.decode()


async def test_a_control_character_in_a_header_value_is_a_400_problem(port: int) -> None:
    request = f"GET /health HTTP/1.1\r\nHost: x\r\nX-A: {MARKER}\x01\r\n\r\n".encode()

    answer = await exchange(port, request)

    assert answer.status == 400
    answer.problem()
    assert MARKER not in answer.body.decode()


async def test_bad_chunked_transfer_encoding_is_a_400_problem(port: int) -> None:
    body = f"{MARKER}\r\n{{}}\r\n0\r\n\r\n".encode()  # a chunk size that is not hex

    answer = await exchange(port, submission(b"Transfer-Encoding: chunked\r\n", body))

    assert answer.status == 400
    answer.problem()
    assert MARKER not in answer.body.decode()


async def test_a_header_over_the_size_limit_is_a_problem_with_aiohttps_status(port: int) -> None:
    big = MARKER + "a" * 20_000  # aiohttp's limit for one header field is 8190 bytes
    request = f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n".encode()

    answer = await exchange(port, request)

    assert answer.status in (400, 431)
    answer.problem()
    assert MARKER not in answer.body.decode()


async def test_an_invalid_content_length_is_a_400_problem(port: int) -> None:
    answer = await exchange(port, submission(f"Content-Length: {MARKER}\r\n".encode(), b"{}"))

    assert answer.status == 400
    answer.problem()
    assert MARKER not in answer.body.decode()


async def test_a_body_that_does_not_decode_is_a_400_problem_not_a_500(port: int) -> None:
    body = f"not gzip {MARKER}".encode()
    headers = f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n".encode()

    answer = await exchange(port, submission(headers, body))

    assert answer.status == 400
    problem = answer.problem()
    assert problem["instance"] == "/v1/tasks"
    assert "Content-Encoding" in problem["detail"]
    assert MARKER not in answer.body.decode()


async def test_an_exception_no_middleware_catches_is_a_bare_500_problem() -> None:
    async def fail(request: web.Request) -> NoReturn:
        raise RuntimeError(MARKER)

    app = web.Application()  # no error_middleware: the connection handler answers
    app.router.add_get("/fail", fail)
    runner = ApiRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))

        answer = await exchange(port, b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await runner.cleanup()

    assert answer.status == 500
    assert answer.headers["connection"] == "close"
    problem = answer.problem()
    assert problem["type"] == "urn:ai-orchestrator:problem:internal-error"
    assert problem["instance"] == "/fail"
    assert MARKER not in answer.body.decode()


def test_a_status_aiohttp_picks_for_a_parser_error_is_kept() -> None:
    oversized = LineTooLong(MARKER.encode(), 8190)

    assert malformed_request(oversized).status == 400
    assert malformed_request(oversized, 431).body() == {
        "type": "about:blank",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": "The request's header fields are too large.",
    }
    assert malformed_request(oversized, 413).type == TYPE_TOO_LARGE
