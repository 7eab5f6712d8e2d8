"""What the HTTP providers share: one pooled ``aiohttp`` session each, and failure mapping.

``HttpClient.post`` opens a request and turns every transport failure into a
``ProviderError``: no ``aiohttp`` exception escapes a provider. ``error_for_status`` classifies
a non-2xx answer from its status, its headers (``Retry-After``...) and the provider's error
*code*, never its error text. ``redact`` scrubs a provider's own key out of anything built
from response data, in case a server echoes it.

No ``aiohttp`` client instrumentation is installed on these sessions: the provider's GenAI
span (see ``_telemetry``) is the CLIENT span of the call, and nothing records request headers
(which carry the API key) or sends our ``traceparent`` to third-party APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from .errors import (
    AuthenticationFailed,
    ContentFiltered,
    InvalidModel,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    StreamInterrupted,
    from_http_status,
    retry_after_from_headers,
)
from .settings import HttpSettings, Secret

#: Most of an error body we read (only its code is used).
_MAX_ERROR_BODY = 64 * 1024
#: What a provider error code may look like to be quoted in a message.
_CODE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
#: How long we wait for the end of a body after the stream's last event, to reuse the
#: connection (in the background: the answer does not wait); a server that keeps it open
#: longer gets it closed instead.
DRAIN_SECONDS = 1.0

_DESCRIPTIONS = {
    400: "the request was refused",
    401: "authentication failed",
    403: "permission denied",
    404: "model or endpoint not found",
    408: "the provider timed out",
    413: "the request is too large",
    422: "the request was refused",
    429: "rate limited",
    500: "the provider failed",
    502: "bad gateway",
    503: "the provider is unavailable",
    504: "the provider timed out",
    529: "the provider is overloaded",
}


class HttpClient:
    """One provider's ``aiohttp`` session: created on first use inside the running loop,
    reused by every call (connection pooling), closed by ``close()``."""

    def __init__(self, settings: HttpSettings, *, label: str) -> None:
        self._settings = settings
        self._label = label
        self._session: aiohttp.ClientSession | None = None
        self._ended: set[int] = set()  # ids of open responses whose last event was read
        self._drains: set[asyncio.Task[None]] = set()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            settings = self._settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=settings.max_connections, ttl_dns_cache=300),
                # No total: the worker bounds the whole call (TASK_TIMEOUT_SECONDS). The read
                # timeout is the longest silence between two reads of the answer.
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=settings.connect_timeout,
                    sock_read=settings.read_timeout,
                ),
                headers={"User-Agent": "ai-orchestrator"},
                auto_decompress=True,
                trust_env=False,
            )
        return self._session

    @contextlib.asynccontextmanager
    async def post(
        self, url: str, *, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST ``body`` as JSON; the open response (closed on exit, its connection kept for
        reuse only when the body was read to its end, or, after ``ended``, once the rest of
        the body arrives in the background)."""
        try:
            response = await self.session.post(
                url,
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json", **headers},
                allow_redirects=False,  # never follow with our key to another place
            )
        except aiohttp.ServerTimeoutError as exc:
            raise ProviderTimeout(f"{self._label}: no answer in time ({_what(exc)})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderUnavailable(
                f"{self._label}: could not reach the API ({_what(exc)})"
            ) from exc
        try:
            yield response
        finally:
            if id(response) in self._ended and not response.content.at_eof():
                task = asyncio.get_running_loop().create_task(_release_when_drained(response))
                self._drains.add(task)
                task.add_done_callback(self._drains.discard)
            else:
                _let_go(response)
            self._ended.discard(id(response))

    def ended(self, response: aiohttp.ClientResponse) -> None:
        """The stream's last event is read: on leaving ``post`` the (empty) rest of the body is
        awaited in the background, so the connection can be reused, instead of the answer
        waiting for it (a server may hold the body open after its last event)."""
        self._ended.add(id(response))

    async def close(self) -> None:
        """Close the session and its connections; idempotent."""
        for task in list(self._drains):
            task.cancel()
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def read_error_body(self, response: aiohttp.ClientResponse) -> Any:
        """The JSON of an error answer (at most 64 KiB), or None if it has none."""
        try:
            raw = await response.content.read(_MAX_ERROR_BODY)
            while len(raw) < _MAX_ERROR_BODY and not response.content.at_eof():
                more = await response.content.read(_MAX_ERROR_BODY - len(raw))
                if not more:
                    break
                raw += more
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None


def decode_json(data: bytes, *, label: str) -> Any:
    """``data`` parsed as JSON; ``MalformedResponse`` if it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedResponse(f"{label}: the answer is not valid JSON") from None


async def read_json(response: aiohttp.ClientResponse, *, label: str) -> Any:
    """A whole (non-streamed) JSON body."""
    try:
        raw = await response.read()
    except aiohttp.ServerTimeoutError as exc:
        raise ProviderTimeout(f"{label}: no data for too long") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise StreamInterrupted(f"{label}: the connection broke ({_what(exc)})") from exc
    return decode_json(raw, label=label)


def _let_go(response: aiohttp.ClientResponse) -> None:
    """Back to the pool if its body was read to the end, else closed (a half-read body
    leaves the connection unusable)."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()


async def _release_when_drained(response: aiohttp.ClientResponse) -> None:
    try:
        await drain(response)
    finally:
        _let_go(response)


async def drain(response: aiohttp.ClientResponse) -> None:
    """Read the (empty) rest of a body briefly after its last event, so the connection can
    be reused; a server that keeps it open longer gets it closed instead."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while await response.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass


def _what(exc: BaseException) -> str:
    """An exception's class name: its text may hold addresses and is no use to clients."""
    return type(exc).__name__


def safe_code(value: object) -> str | None:
    """A provider error code fit to quote (short, plain characters), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and _CODE.match(value):
        return value
    return None


def redact(text: str, secret: Secret | None) -> str:
    """``text`` with any occurrence of ``secret`` replaced by ``***``."""
    if secret is not None and secret.reveal() and secret.reveal() in text:
        return text.replace(secret.reveal(), "***")
    return text


def error_for_status(
    label: str,
    status: int,
    headers: Mapping[str, str],
    *,
    code: str | None,
    secret: Secret | None,
    retry_after: float | None = None,
    authentication: bool = False,
    content_filter: bool = False,
    quota: bool = False,
) -> ProviderError:
    """The ``ProviderError`` for a non-2xx answer.

    ``code`` is the provider's error code (quoted in the message when it looks plain);
    ``retry_after`` overrides the headers' hint. The flags let a provider say what its
    code means: a bad key sent with a 400 (Gemini), a 4xx that is a content refusal, a 429
    that is an exhausted quota rather than a rate.
    """
    code = safe_code(code)
    if code is not None:
        code = redact(code, secret)
    wait = retry_after if retry_after is not None else retry_after_from_headers(headers)
    described = _DESCRIPTIONS.get(status) or (
        "the provider failed" if status >= 500 else "unexpected answer"
    )
    tag = f" [{code}]" if code else ""
    message = f"{label}: {described}{tag}"
    if authentication:
        return AuthenticationFailed(
            f"{label}: authentication failed{tag} (HTTP {status})", status=status, code=code
        )
    if content_filter:
        return ContentFiltered(
            f"{label}: the prompt was refused by a content filter{tag} (HTTP {status})",
            status=status,
            code=code,
        )
    if quota:
        return QuotaExceeded(
            f"{label}: the account's quota is exhausted{tag} (HTTP {status})",
            status=status,
            code=code,
        )
    if status == 404:
        return InvalidModel(f"{message} (HTTP 404)", status=status, code=code)
    if 300 <= status < 400:
        # A misconfigured base URL: retrying does not help (root class: not retryable).
        return ProviderError(
            f"{label}: unexpected redirect; check the base URL (HTTP {status})",
            status=status,
            code=code,
        )
    return from_http_status(status, message, retry_after=wait, code=code)
