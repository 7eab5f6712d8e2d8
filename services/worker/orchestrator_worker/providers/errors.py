"""What a provider call can fail with, classified so the worker knows what to do next.

Every provider translates its client's exceptions and HTTP statuses into one of these (see
``from_http_status``), so the worker never sees an ``aiohttp`` or SDK exception. ``type`` is
what clients see in the failed event's ``error.type``; ``retryable`` says whether trying the
same task again later may succeed; ``retry_after`` is the provider's own hint (seconds).

Messages travel to clients as they are: providers must put no secrets (API keys, signed URLs)
and no raw response bodies into them. The HTTP providers build them from the status code and
the provider's error *code* only (``status`` and ``code`` below), never from its error text,
which may quote the request (OpenAI's 401 text quotes part of the key).

Which errors are retryable (``retryable``): ``RateLimited``, ``ServerError`` and its
``Overloaded``, ``ProviderTimeout``, ``ProviderUnavailable``, ``StreamInterrupted`` and
``MalformedResponse``. Not retryable: ``InvalidRequest``, ``InvalidModel``,
``AuthenticationFailed``, ``ContentFiltered``, ``QuotaExceeded`` and the root class.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import ClassVar

from ..errors import WorkerError


class ProviderError(WorkerError):
    """Root of provider failures. Unknown to the worker: treated as not retryable."""

    type: ClassVar[str] = "provider_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: Seconds the provider asked us to wait before trying again (None: no hint).
        self.retry_after = retry_after
        #: The HTTP status of the provider's answer, when there was one.
        self.status = status
        #: The provider's own error code or type (``rate_limit_exceeded``,
        #: ``RESOURCE_EXHAUSTED``...), when it sent one; for logs and metrics.
        self.code = code


class InvalidModel(ProviderError):
    """No provider serves this model name, or the provider does not know the model."""

    type = "invalid_model"


class InvalidRequest(ProviderError):
    """The provider refused the request as malformed (HTTP 400/404/422, bad parameters)."""

    type = "invalid_request"


class AuthenticationFailed(ProviderError):
    """The provider refused our credentials (HTTP 401/403): an operator must fix the key."""

    type = "authentication"


class ContentFiltered(ProviderError):
    """The provider refused to answer this prompt (safety or policy filter)."""

    type = "content_filter"


class RateLimited(ProviderError):
    """Too many requests or tokens for our quota (HTTP 429); honour ``retry_after``."""

    type = "rate_limit"
    retryable = True


class ProviderTimeout(ProviderError):
    """The provider did not answer in time (HTTP 408/504, or our own read timeout)."""

    type = "timeout"
    retryable = True


class ServerError(ProviderError):
    """The provider failed on its side (HTTP 5xx, overloaded)."""

    type = "server_error"
    retryable = True


class ProviderUnavailable(ProviderError):
    """The provider could not be reached (DNS, refused or reset connection, TLS)."""

    type = "unavailable"
    retryable = True


class Overloaded(ServerError):
    """The provider says it is overloaded (HTTP 529): back off harder than for a 500."""

    type = "overloaded"


class QuotaExceeded(ProviderError):
    """Our account is out of quota or credit (OpenAI's 429 ``insufficient_quota``): waiting
    does not help, an operator must act."""

    type = "quota_exceeded"


class StreamInterrupted(ProviderError):
    """The answer stream stopped before its end (connection closed, body cut short): the
    text received so far is incomplete; trying again may succeed."""

    type = "stream_interrupted"
    retryable = True


class MalformedResponse(ProviderError):
    """The provider's answer could not be understood (bad JSON, bad SSE, unexpected shape).
    Retryable: usually a proxy or a transient fault, and retries are bounded anyway."""

    type = "malformed_response"
    retryable = True


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


#: One ``<number><unit>`` step of a duration such as ``1m30.5s`` or ``250ms``.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``1.5s``, ``20ms``; OpenAI's rate-limit reset
    headers, Gemini's ``retryDelay``) or a bare number of seconds; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    total, end = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != end:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        end = match.end()
    return total if end == len(value) and end else None


def retry_after_from_headers(
    headers: Mapping[str, str], *, now: float | None = None
) -> float | None:
    """The wait a provider asks for, in seconds, from its response headers; None if none.

    In order: ``Retry-After`` (seconds or HTTP date), ``retry-after-ms`` (OpenAI), then the
    rate-limit reset headers ``x-ratelimit-reset-requests`` / ``-tokens`` (the one whose
    ``x-ratelimit-remaining-*`` is 0, else the longer). ``headers`` must look names up
    case-insensitively (aiohttp's ``CIMultiDict`` does).
    """
    seconds = parse_retry_after(headers.get("Retry-After"), now=now)
    if seconds is not None:
        return seconds
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    resets: list[float] = []
    exhausted: list[float] = []
    for kind in ("requests", "tokens"):
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if reset is None:
            continue
        resets.append(reset)
        if (headers.get(f"x-ratelimit-remaining-{kind}") or "").strip() == "0":
            exhausted.append(reset)
    if exhausted:
        return max(exhausted)
    return max(resets) if resets else None


def from_http_status(
    status: int,
    message: str,
    *,
    retry_after: float | None = None,
    code: str | None = None,
) -> ProviderError:
    """The error for a non-2xx HTTP answer from a provider API.

    ``message`` must hold no secrets; `` (HTTP <status>)`` is appended. 529 is ``Overloaded``,
    other 5xx ``ServerError``; 404 stays ``InvalidRequest`` here (a provider that knows a 404
    means an unknown model raises ``InvalidModel`` itself).
    """
    cls: type[ProviderError]
    if status == 429:
        cls = RateLimited
    elif status in (408, 504):
        cls = ProviderTimeout
    elif status == 529:
        cls = Overloaded
    elif status >= 500:
        cls = ServerError
    elif status in (401, 403):
        cls = AuthenticationFailed
    elif 400 <= status < 500:
        cls = InvalidRequest
    else:
        cls = ProviderError
    return cls(f"{message} (HTTP {status})", retry_after=retry_after, status=status, code=code)
