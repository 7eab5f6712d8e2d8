"""The Files and Batches routes answer errors in OpenAI's shape, like Chat Completions:
handlers raise ``Problem`` as everywhere else, and ``openai_errors`` tells it as
``{"error": {"message", "type", "param", "code"}}`` with the same status (the official SDKs
map statuses to their exception classes)."""

from __future__ import annotations

import functools
from typing import Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..chat import error_body
from ..problems import PROBLEM_CONTENT_TYPE, error_middleware

__all__ = ["openai_errors"]

_TYPES: Final = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
_PASSED: Final = ("Retry-After", "WWW-Authenticate", "traceparent", "Accept-Post", "Allow")


def openai_errors(handler: Handler) -> Handler:
    """``handler``, its problems (and the API's own: 401, 413, a crash) told OpenAI's way."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        response = await error_middleware(request, handler)
        if response.prepared or response.content_type != PROBLEM_CONTENT_TYPE:
            return response
        assert isinstance(response, web.Response)
        problem = orjson.loads(response.body)  # type: ignore[arg-type]
        errors = problem.get("errors") or []
        status = response.status
        kind = _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
        body = error_body(
            str(problem.get("detail", "")),
            kind,
            str(errors[0]["field"]) if errors else None,
            str(problem.get("type", "")).rpartition(":")[2] or None,
        )
        headers = {name: value for name, value in response.headers.items() if name in _PASSED}
        return web.Response(
            body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
        )

    return wrapped
