"""A rate limit for the OpenTelemetry SDK's own complaints while spans cannot be exported.

With the collector down, the OTLP exporter logs a warning per retry (every few seconds) and
an error per dropped batch, for as long as the outage lasts, in every process. A
``LogThrottle`` on those loggers lets one record per logger through per ``interval`` and
counts the rest; the next record let through says how many were held back.

``setup_telemetry`` installs one shared throttle while any of its exporters lives
(``acquire_sdk_throttle`` / ``release_sdk_throttle``, counted), so several providers in
one process (tests) neither stack filters nor leave one behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import attrs

#: The SDK loggers that repeat themselves for as long as exports fail.
SDK_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",  # retries, failed batches
    "opentelemetry.exporter.otlp.common.http",  # the same, from a client given no logger
    "opentelemetry.sdk._shared_internal",  # the batch processor: "Queue full, dropping span."
)

#: Seconds between two records of one throttled SDK logger; read when a throttle is installed.
SDK_LOG_INTERVAL = 60.0


@attrs.define
class _Window:
    opened: float
    held: int = 0


class LogThrottle(logging.Filter):
    """Passes one record per logger per ``interval`` seconds and counts the ones it holds back.

    A record let through after some were held back ends with ``[N more ... not logged]`` and
    carries ``suppressed_records=N`` (a field of its own in JSON logs). Thread-safe: records
    come from the export thread and from any thread that ends a span.
    """

    def __init__(
        self, interval: float = SDK_LOG_INTERVAL, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        with self._lock:
            window = self._windows.get(record.name)
            if window is not None and now - window.opened < self.interval:
                window.held += 1
                return False
            self._windows[record.name] = _Window(opened=now)
        if window is not None and window.held:
            # Appended to the format string, not the formatted message: formatting here could
            # raise into the SDK's logging call. The suffix holds no '%'.
            record.msg = (
                f"{record.msg} [{window.held} more from this logger in the last "
                f"{now - window.opened:.0f}s were not logged]"
            )
            record.suppressed_records = window.held
        return True

    def drain(self) -> int:
        """How many records are held back and not reported yet; starts every window afresh."""
        with self._lock:
            held = sum(window.held for window in self._windows.values())
            self._windows.clear()
        return held


@attrs.define
class _Installed:
    throttle: LogThrottle | None = None
    users: int = 0


_lock = threading.Lock()
_installed = _Installed()


def acquire_sdk_throttle() -> LogThrottle:
    """Throttle the ``SDK_EXPORT_LOGGERS`` (installing the filter on first use); the throttle.

    Every call needs one ``release_sdk_throttle()``.
    """
    with _lock:
        if _installed.throttle is None:
            _installed.throttle = LogThrottle(SDK_LOG_INTERVAL)
            for name in SDK_EXPORT_LOGGERS:
                logging.getLogger(name).addFilter(_installed.throttle)
        _installed.users += 1
        return _installed.throttle


def release_sdk_throttle() -> None:
    """Undo one ``acquire_sdk_throttle()``; the last one removes the filter."""
    with _lock:
        if _installed.throttle is None:
            return
        _installed.users -= 1
        if _installed.users > 0:
            return
        for name in SDK_EXPORT_LOGGERS:
            logging.getLogger(name).removeFilter(_installed.throttle)
        _installed.throttle = None
        _installed.users = 0
