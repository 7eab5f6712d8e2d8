"""What a provider call can fail with, classified so the worker knows what to do next.

Every provider translates its client's exceptions and HTTP statuses into one of these (see
``from_http_status``), so the worker never sees an ``aiohttp`` or SDK exception. ``type`` is
what clients see in the failed event's ``error.type``; ``retryable`` says whether trying the
same task again later may succeed; ``retry_after`` is the provider's own hint (seconds).

Messages travel to clients as they are: providers must put no secrets (API keys, signed URLs)
and no raw response bodies into them.
"""

from __future__ import annotations

import email.utils
import time
from typing import ClassVar

from ..errors import WorkerError


class ProviderError(WorkerError):
    """Root of provider failures. Unknown to the worker: treated as not retryable."""

    type: ClassVar[str] = "provider_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


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


def from_http_status(
    status: int, message: str, *, retry_after: float | None = None
) -> ProviderError:
    """The error for a non-2xx HTTP answer from a provider API."""
    cls: type[ProviderError]
    if status == 429:
        cls = RateLimited
    elif status in (408, 504):
        cls = ProviderTimeout
    elif status >= 500:
        cls = ServerError
    elif status in (401, 403):
        cls = AuthenticationFailed
    elif 400 <= status < 500:
        cls = InvalidRequest
    else:
        cls = ProviderError
    return cls(f"{message} (HTTP {status})", retry_after=retry_after)
