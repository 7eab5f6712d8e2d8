"""The API's connection limits, over real sockets against ``serve``: a header read timeout,
an idle keep-alive timeout and a cap on open connections.

Timeouts are short (0.5 s) so the tests are quick; nothing asserts how long anything took:
reads are bounded by hang guards only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from orchestrator_api.config import ApiSettings, ConfigError
from tests.api.conftest import API_KEYS
from tests.api.test_http_malformed import Answer
from tests.api.test_http_service import running

HANG = 15.0  # hang guard only
SHORT = 0.5
LONG = 120.0  # longer than any test: a limit that must not be the one that acts

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

HEALTH = b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n"


@contextlib.asynccontextmanager
async def api(
    *, header_timeout: float = LONG, keepalive: float = LONG, max_connections: int = 10_000
) -> AsyncIterator[int]:
    settings = ApiSettings(
        api_keys=API_KEYS,
        http_header_timeout_seconds=header_timeout,
        http_keepalive_seconds=keepalive,
        http_max_connections=max_connections,
    )
    async with running(settings) as (url, _):
        yield int(url.rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[Streams]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def response(reader: asyncio.StreamReader) -> Answer:
    """One response with a Content-Length body, read off a kept-alive connection."""
    async with asyncio.timeout(HANG):
        head = await reader.readuntil(b"\r\n\r\n")
        answer = Answer(head)
        body = await reader.readexactly(int(answer.headers.get("content-length", "0")))
    return Answer(head + body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (EOF or reset), without sending more."""
    try:
        async with asyncio.timeout(HANG):
            return await reader.read() == b""
    except ConnectionResetError:
        return True


async def test_a_connection_sending_headers_one_byte_at_a_time_is_closed() -> None:
    async with api(header_timeout=SHORT) as port, connection(port) as (reader, writer):
        request = b"GET /health HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"s" * 10_000

        async def trickle() -> None:
            for byte in request:  # never ends its headers
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

        sender = asyncio.create_task(trickle())
        try:
            assert await closed_by_server(reader)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    async with api(header_timeout=SHORT) as port, connection(port) as (reader, _):
        assert await closed_by_server(reader)


async def test_the_next_request_on_a_kept_alive_connection_has_the_header_timeout_too() -> None:
    async with api(header_timeout=SHORT) as port, connection(port) as (reader, writer):
        writer.write(HEALTH)
        assert (await response(reader)).status == 200
        writer.write(b"GET /health HTTP/1.1\r\nHost: h\r\n")  # and then nothing

        assert await closed_by_server(reader)


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    async with api(keepalive=SHORT) as port, connection(port) as (reader, writer):
        writer.write(HEALTH)
        answer = await response(reader)
        assert answer.status == 200
        assert answer.headers.get("connection", "keep-alive").lower() != "close"

        assert await closed_by_server(reader)


async def test_a_body_slower_than_the_header_timeout_is_still_read() -> None:
    body = orjson.dumps({"prompt": "slow body " * 20})
    head = (
        b"POST /v1/tasks HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer key-acme\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    async with api(header_timeout=SHORT) as port, connection(port) as (reader, writer):
        writer.write(head)
        step = len(body) // 10 + 1
        for start in range(0, len(body), step):  # the body takes about twice the timeout
            await asyncio.sleep(SHORT / 5)
            writer.write(body[start : start + step])

        assert (await response(reader)).status == 202


async def test_keep_alive_requests_in_a_row_are_unaffected() -> None:
    async with (
        api(header_timeout=SHORT, keepalive=SHORT, max_connections=2) as port,
        connection(port) as (reader, writer),
    ):
        for _ in range(20):
            writer.write(HEALTH)
            assert (await response(reader)).status == 200


async def test_past_the_connection_cap_a_new_connection_gets_a_503_and_is_closed() -> None:
    cap = 3
    async with api(max_connections=cap) as port, contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(connection(port)) for _ in range(cap)]
        for reader, writer in held:  # each is open and served
            writer.write(HEALTH)
            assert (await response(reader)).status == 200

        async with connection(port) as (reader, _):
            async with asyncio.timeout(HANG):
                refused = Answer(await reader.read())
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.problem()["type"] == "urn:ai-orchestrator:problem:service-unavailable"

        for reader, writer in held:  # the open ones are untouched
            writer.write(HEALTH)
            assert (await response(reader)).status == 200

        _, first = held[0]
        first.close()
        async with asyncio.timeout(HANG):  # the server sees the close a moment later
            while True:
                async with connection(port) as (reader, writer):
                    writer.write(HEALTH)
                    if (await response(reader)).status == 200:
                        break
                await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HTTP_HEADER_TIMEOUT_SECONDS", "0"),
        ("HTTP_HEADER_TIMEOUT_SECONDS", "soon"),
        ("HTTP_KEEPALIVE_SECONDS", "-1"),
        ("HTTP_KEEPALIVE_SECONDS", "inf"),
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP_MAX_CONNECTIONS", "many"),
    ],
)
def test_a_malformed_limit_is_a_config_error_naming_it(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        ApiSettings.from_env({"API_KEYS": "t:k", variable: value})
    assert error.value.variable == variable


def test_the_limits_default_to_10s_75s_and_10000() -> None:
    settings = ApiSettings.from_env({"API_KEYS": "t:k"})
    assert settings.http_header_timeout_seconds == 10.0
    assert settings.http_keepalive_seconds == 75.0
    assert settings.http_max_connections == 10_000
    custom = ApiSettings.from_env(
        {
            "API_KEYS": "t:k",
            "HTTP_HEADER_TIMEOUT_SECONDS": "2.5",
            "HTTP_KEEPALIVE_SECONDS": "5",
            "HTTP_MAX_CONNECTIONS": "7",
        }
    )
    assert (custom.http_header_timeout_seconds, custom.http_keepalive_seconds) == (2.5, 5.0)
    assert custom.http_max_connections == 7
