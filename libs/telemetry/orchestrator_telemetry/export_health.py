"""One warning when spans start being dropped, one info line when the collector is back.

``ExportHealth`` sees the result of every batch export (never single spans): on the first
failure it logs why, in a few words, and that the SDK's own export errors are throttled from
then on (``log_throttle``); on the next success it logs how long the outage lasted and what
was lost meanwhile. The reason comes from ``ProblemNotingSession``, the ``requests`` session
handed to the OTLP exporter, which notes why its last request failed.

Neither line carries credentials: the endpoint is shown without userinfo or query string,
and the reason is an HTTP status or the innermost socket/TLS error, never a header.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from opentelemetry.sdk.trace.export import SpanExportResult

from .log_throttle import LogThrottle

_log = logging.getLogger(__name__)

#: The SDK loads its own ``requests`` session (an auth plugin) when one of these is set;
#: a session passed in would replace it, so then the exporter keeps its own.
_CREDENTIAL_PROVIDER_VARIABLES = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
)

_MAX_REASON = 120


def describe_error(exc: BaseException) -> str:
    """A few words on why a request failed: "connection refused", "timed out", ...

    urllib3 and requests wrap the socket error two or three times, each wrapper repeating
    host, port and path; the innermost error is the part worth reading.
    """
    inner = _innermost(exc)
    if isinstance(inner, socket.gaierror):
        return f"cannot resolve the host ({inner.strerror or inner})"
    if isinstance(inner, ssl.SSLError):
        return f"TLS error ({inner.reason or inner})"
    if isinstance(inner, TimeoutError) or isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()  # "connection refused", "network is unreachable", ...
    text = str(inner) or type(inner).__name__
    return text if len(text) <= _MAX_REASON else f"{text[: _MAX_REASON - 3]}..."


def _innermost(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError keeps it there
        candidates = (
            reason,
            exc.__cause__,
            exc.__context__,
            exc.args[0] if exc.args else None,  # requests wraps urllib3's error as an arg
        )
        inner = next(
            (c for c in candidates if isinstance(c, BaseException) and id(c) not in seen), None
        )
        if inner is None:
            return exc
        seen.add(id(inner))
        exc = inner


class ProblemNotingSession(requests.Session):
    """A ``requests`` session that remembers, in a few words, why its last request failed."""

    problem: str | None = None

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        try:
            response = super().send(request, **kwargs)
        except requests.RequestException as exc:
            self.problem = describe_error(exc)
            raise
        if response.status_code >= 400:  # the exporter takes 2xx and 3xx as delivered
            self.problem = f"HTTP {response.status_code} {response.reason or ''}".rstrip()
        return response

    def take_problem(self) -> str | None:
        """The last problem noted, forgetting it."""
        problem, self.problem = self.problem, None
        return problem


def problem_noting_session() -> ProblemNotingSession | None:
    """A session for the OTLP exporter, or None when the SDK is to load its own (see above)."""
    if any(os.environ.get(name) for name in _CREDENTIAL_PROVIDER_VARIABLES):
        return None
    return ProblemNotingSession()


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _every(interval: float) -> str:
    return "once a minute" if interval == 60 else f"once every {interval:g}s"


class ExportHealth:
    """Logs the transitions of the export path between delivering and dropping batches.

    ``endpoint`` names where spans go in both lines (already free of credentials);
    ``session`` supplies the reason; ``throttle`` is drained on recovery to report how many
    SDK records it held back. ``observe`` is called by the exporting thread, once per batch.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        session: ProblemNotingSession | None = None,
        throttle: LogThrottle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self._session = session
        self._throttle = throttle
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self.dropped_batches = 0
        self.dropped_spans = 0

    @property
    def failing(self) -> bool:
        """Whether the last export failed."""
        return self._failing_since is not None

    def observe(self, result: SpanExportResult, spans: int) -> None:
        """Note the outcome of exporting one batch of ``spans`` spans."""
        problem = self._session.take_problem() if self._session is not None else None
        now = self._clock()
        with self._lock:
            if result is not SpanExportResult.SUCCESS:
                self.dropped_batches += 1
                self.dropped_spans += spans
                if self._failing_since is not None:
                    return
                self._failing_since = now
                recovered = None
            else:
                if self._failing_since is None:
                    return
                recovered = (now - self._failing_since, self.dropped_batches, self.dropped_spans)
                self._failing_since = None
                self.dropped_batches = self.dropped_spans = 0
        if recovered is None:
            self._log_failing(problem or "export failed")
        else:
            self._log_recovered(*recovered)

    def _log_failing(self, reason: str) -> None:
        every = _every(self._throttle.interval) if self._throttle is not None else None
        _log.warning(
            "telemetry: spans to %s are being dropped: %s%s",
            self.endpoint,
            reason,
            f"; export errors are logged at most {every} until it recovers" if every else "",
            extra={"otlp_endpoint": self.endpoint, "reason": reason},
        )

    def _log_recovered(self, outage: float, batches: int, spans: int) -> None:
        held = self._throttle.drain() if self._throttle is not None else 0
        _log.info(
            "telemetry: collector at %s reachable again after %.0fs; dropped meanwhile: %s (%s)%s",
            self.endpoint,
            outage,
            _count(batches, "batch", "batches"),
            _count(spans, "span"),
            f"; {_count(held, 'repeated export log record')} not logged" if held else "",
            extra={
                "otlp_endpoint": self.endpoint,
                "outage_seconds": round(outage, 1),
                "dropped_batches": batches,
                "dropped_spans": spans,
            },
        )
