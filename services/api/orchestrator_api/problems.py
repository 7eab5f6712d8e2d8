"""RFC 9457 problem details: every error leaves the API as ``application/problem+json``,
except on the OpenAI-compatible paths (``/v1/chat/completions``, ``/v1/models``, ``/v1/files``,
``/v1/batches``, any other ``/v1/`` path that is not this API's own), which answer OpenAI's
error object ``{"error": {"message", "type", "param", "code"}}`` with the same status, so the
official SDKs raise their own exception classes with the message.

Handlers raise ``Problem``; ``error_middleware`` turns it, any aiohttp ``HTTPException``
(unknown route, wrong method, body too large), a body that breaks off or does not decode, and
any unexpected exception into a problem response. Unexpected exceptions are logged with their
traceback and answered with a bare 500 problem: nothing about the server's internals reaches
the client. Requests aiohttp's HTTP parser rejects before any middleware runs get
``malformed_request`` problems from the service's runner (``runner.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.typedefs import Handler

from orchestrator_telemetry.propagation import current_span_context, traceparent

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "FieldError",
    "Problem",
    "error_middleware",
    "malformed_request",
    "openai_error_body",
    "openai_error_type",
    "problem_response",
    "speaks_openai",
    "trace_headers",
]

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

#: Problem type URIs. ``about:blank`` means "just the HTTP status" (RFC 9457 section 4.2.1).
TYPE_BLANK: Final = "about:blank"
TYPE_VALIDATION: Final = "urn:ai-orchestrator:problem:validation-error"
TYPE_MALFORMED_JSON: Final = "urn:ai-orchestrator:problem:malformed-json"
TYPE_TOO_LARGE: Final = "urn:ai-orchestrator:problem:payload-too-large"
TYPE_UNAVAILABLE: Final = "urn:ai-orchestrator:problem:service-unavailable"
TYPE_UNAUTHORIZED: Final = "urn:ai-orchestrator:problem:unauthorized"
TYPE_NOT_FOUND: Final = "urn:ai-orchestrator:problem:not-found"
TYPE_UNSUPPORTED_MEDIA: Final = "urn:ai-orchestrator:problem:unsupported-media-type"
TYPE_KEY_IN_USE: Final = "urn:ai-orchestrator:problem:idempotency-key-in-use"
TYPE_KEY_REUSED: Final = "urn:ai-orchestrator:problem:idempotency-key-reused"
TYPE_RATE_LIMITED: Final = "urn:ai-orchestrator:problem:rate-limited"
TYPE_TASK_FINISHED: Final = "urn:ai-orchestrator:problem:task-finished"
TYPE_INTERNAL: Final = "urn:ai-orchestrator:problem:internal-error"

_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

FieldError = Mapping[str, str]  # {"field": "prompt", "message": "must be a non-empty string"}


class Problem(Exception):
    """An error answer: raise it from a handler and the middleware sends it."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str = TYPE_BLANK,
        title: str | None = None,
        errors: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type
        self.title = title or _TITLES.get(status) or "Error"
        self.errors = errors
        self.headers = headers

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = list(self.errors)
        return body


#: ``/v1/`` paths that are this API's own; every other ``/v1/`` path is OpenAI's.
_NATIVE_PREFIXES: Final = ("/v1/tasks", "/v1/admin", "/v1/console")
#: OpenAI's error ``type`` by status; other 4xx are ``invalid_request_error``.
_OPENAI_TYPES: Final = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def speaks_openai(path: str) -> bool:
    """Whether errors on ``path`` are told in OpenAI's shape."""
    return path.startswith("/v1/") and not path.startswith(_NATIVE_PREFIXES)


def openai_error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    return _OPENAI_TYPES.get(status) or (
        "server_error" if status >= 500 else "invalid_request_error"
    )


def _openai_response(problem: Problem) -> web.Response:
    param = str(problem.errors[0]["field"]) if problem.errors else None
    code = problem.type.rpartition(":")[2] if problem.type != TYPE_BLANK else None
    return web.Response(
        body=orjson.dumps(
            openai_error_body(problem.detail, openai_error_type(problem.status), param, code)
        ),
        status=problem.status,
        headers=problem.headers,
        content_type="application/json",
    )


def problem_response(problem: Problem, request: web.BaseRequest | None = None) -> web.Response:
    """The ``application/problem+json`` response for ``problem`` (OpenAI's error object on
    the paths that speak OpenAI's API)."""
    instance = request.path if request is not None else None
    if instance is not None and speaks_openai(instance):
        return _openai_response(problem)
    response = web.Response(
        body=orjson.dumps(problem.body(instance)),
        status=problem.status,
        headers=problem.headers,
    )
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def trace_headers() -> dict[str, str]:
    """``{"traceparent": ...}`` of the current (server) span, or ``{}`` if there is none."""
    context = current_span_context()
    return {"traceparent": traceparent(context)} if context.is_valid else {}


#: What is wrong, by the class of aiohttp's parser error (subclasses first). aiohttp's own
#: messages quote the offending bytes back, so they are not sent.
_MALFORMED: Final[tuple[tuple[type[Exception], str], ...]] = (
    (LineTooLong, "The request line or a header field is too long."),
    (BadHttpMethod, "The request method is not valid."),
    (BadStatusLine, "The request line is malformed."),
    (InvalidURLError, "The request target is not a valid URL."),
    (InvalidHeader, "A request header is not valid."),
    (TransferEncodingError, "The chunked transfer encoding of the body is malformed."),
    (ContentLengthError, "The body does not match its Content-Length."),
    (ContentEncodingError, "The body cannot be decoded with its Content-Encoding."),
)
#: A parser reason that quotes nothing: llhttp's fixed phrases ("Invalid header value char",
#: "Invalid character in chunk size", "Too many headers received").
_PLAIN_REASON: Final = re.compile(r"[A-Za-z][A-Za-z0-9 ,'-]{0,79}")


def malformed_request(exc: BaseException, status: int = 400) -> Problem:
    """The problem for a request (or its body) that aiohttp's HTTP parser rejected with ``exc``.

    ``status`` is the one aiohttp chose. The detail says what is wrong without quoting the
    request back.
    """
    if status == 413:
        return Problem(413, "The request is too large.", type=TYPE_TOO_LARGE)
    if status == 431:
        return Problem(431, "The request's header fields are too large.")
    for error, detail in _MALFORMED:
        if isinstance(exc, error):
            return Problem(status, detail)
    reason = str(getattr(exc, "message", "")).partition("\n")[0].strip().rstrip(":.")
    if _PLAIN_REASON.fullmatch(reason):
        return Problem(status, f"{reason}.")
    return Problem(status, "The request is not valid HTTP.")


def _from_http_exception(exc: web.HTTPException) -> Problem:
    status = exc.status
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in _DROP_HEADERS}
    if status == 404:
        return Problem(404, "No such resource.", type=TYPE_NOT_FOUND, headers=headers)
    if status == 413:
        return Problem(413, "The request body is too large.", type=TYPE_TOO_LARGE, headers=headers)
    detail = exc.text if exc.text and not exc.text.startswith(f"{status}:") else exc.reason
    return Problem(status, detail or exc.reason, title=exc.reason, headers=headers)


_DROP_HEADERS: Final = frozenset({"content-type", "content-length"})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Problems for every error, and the ``traceparent`` header on every plain response."""
    try:
        response = await handler(request)
    except Problem as problem:
        response = problem_response(problem, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem_response(_from_http_exception(exc), request)
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # Reading the body failed in aiohttp's parser (bad chunked framing, a gzip body that
        # is not): the client's fault. The parser's error says how; RequestPayloadError wraps
        # it as its cause.
        parse_error = exc.__cause__ if isinstance(exc, web.RequestPayloadError) else exc
        response = problem_response(malformed_request(parse_error or exc), request)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = problem_response(
            Problem(500, "The server failed to handle this request.", type=TYPE_INTERNAL),
            request,
        )
    if not response.prepared:
        context = current_span_context()
        if context.is_valid:
            response.headers["traceparent"] = traceparent(context)
    return response
