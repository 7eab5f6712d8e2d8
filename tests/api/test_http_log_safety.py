"""No request header value reaches a log line, whatever the parser rejects, at any level.

A canary API key goes to a real served API over a raw socket inside each kind of request
aiohttp's HTTP parser rejects; every log record of every logger (aiohttp's own included) is
captured at DEBUG and at INFO and searched for it. Client errors are one line below WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from orchestrator_api import runner as runner_module
from orchestrator_api.config import ApiSettings
from orchestrator_api.runner import redact_parser_errors
from tests.api.test_http_malformed import exchange
from tests.api.test_http_service import running

CANARY = "canary-key-4f1d9e"
#: The canary with what makes its header field invalid: oversized, control characters.
OVERSIZED = CANARY + "k" * 8300


def _with_key(value: str, extra: bytes = b"", body: bytes = b"") -> bytes:
    return (
        b"POST /v1/tasks/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"Authorization: Bearer "
        + value.encode("latin-1")
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


REQUESTS = {
    "oversized header": _with_key(OVERSIZED),
    "NUL after the key": _with_key(CANARY + "\x00"),
    "DEL after the key": _with_key(CANARY + "\x7f"),
    "CR inside the key": _with_key(CANARY + "\rx"),
    "bad chunk size": _with_key(
        CANARY,
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        f"{CANARY}\r\n{{}}\r\n0\r\n\r\n".encode(),
    ),
    "key in a malformed request line": f"GET /{CANARY} HTTP/9.9\r\n\r\n".encode(),
    "key in an invalid header name": f"GET / HTTP/1.1\r\nX {CANARY}: v\r\n\r\n".encode(),
    "key in a bad Content-Length": _with_key(CANARY, f"Content-Length: x{CANARY}\r\n".encode()),
    "too many headers": _with_key(
        CANARY, b"".join(f"X-H{i}: {CANARY}\r\n".encode() for i in range(200))
    ),
}


@pytest.fixture(
    params=[("DEBUG", "ours"), ("INFO", "ours"), ("DEBUG", "aiohttp's"), ("INFO", "aiohttp's")],
    ids=lambda param: f"{param[0]}-{param[1]} handler",
)
async def port(
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[int]:
    """The API served with ``LOG_LEVEL`` DEBUG (access logs on) or INFO, every logger captured
    at that level, by the runner's connection handler or (internals changed) aiohttp's."""
    level, handler = request.param
    if handler != "ours":
        monkeypatch.setattr(runner_module, "_PROBLEM", "as if aiohttp had changed")
    caplog.set_level(logging.DEBUG if level == "DEBUG" else logging.INFO)
    settings = ApiSettings(api_keys=(("acme", CANARY),), log_level=level)
    async with running(settings) as (url, _):
        yield int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("name", list(REQUESTS))
async def test_a_rejected_request_logs_no_header_value_and_no_error(
    port: int, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    answer = await exchange(port, REQUESTS[name])

    assert 400 <= answer.status < 500
    assert CANARY not in caplog.text
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert CANARY not in str(record.args)
    client_errors = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert all(r.levelno < logging.WARNING for r in client_errors), caplog.text
    assert all(r.exc_info is None for r in client_errors), caplog.text


async def test_a_good_request_logs_no_header_value_at_debug(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    request = (
        f"GET /v1/tasks/x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {CANARY}\r\n"
        f"User-Agent: {CANARY}\r\nReferer: http://{CANARY}/\r\nConnection: close\r\n\r\n"
    ).encode()

    answer = await exchange(port, request)

    assert answer.status == 404
    assert CANARY not in caplog.text


def test_the_filter_on_aiohttps_loggers_redacts_parser_errors_of_any_handler() -> None:
    """The safety net under every path: aiohttp's own handler logging a parser error."""
    from aiohttp.http_exceptions import LineTooLong

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("aiohttp.server")
    keep = Keep()
    logger.addHandler(keep)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        redact_parser_errors()
        redact_parser_errors()  # installing twice installs one filter
        error = LineTooLong(OVERSIZED.encode(), 8190)
        logger.error("Error handling request from %s", "127.0.0.1", exc_info=error)
        logger.error("an error that is not the client's stays as it is")
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)

    assert len(records) == 2
    record, other = records
    assert other.levelno == logging.ERROR
    assert record.levelno == logging.DEBUG
    assert record.exc_info is None
    assert CANARY not in record.getMessage()
    assert "LineTooLong" in record.getMessage()
