"""Logging with trace ids: ``setup_logging("INFO", fmt="plain" | "json")`` once per process.

Every record gets ``trace_id`` and ``span_id`` (hex, or ``""`` outside a span) from the span
current when it was logged, so a log line leads to its trace. ``plain`` is one human line;
``json`` is one orjson object per line with ``ts``, ``level``, ``logger``, ``message``,
``trace_id``, ``span_id``, any ``extra={...}`` fields, and ``exc`` for a traceback.

The ids are added by a handler filter, so records of every logger (aiohttp, redis, ...) get
them, and they are read at logging time, in the task that logged.
"""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any, Literal

import attrs
import orjson
from opentelemetry import trace

from .errors import TelemetryConfigError

LogFormat = Literal["plain", "json"]

PLAIN_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [trace_id=%(trace_id)s span_id=%(span_id)s] %(message)s"
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "trace_id",
    "span_id",
    "taskName",
}


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` of the current span to each record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = trace.format_trace_id(span_context.trace_id)
            record.span_id = trace.format_span_id(span_context.span_id)
        else:
            record.trace_id = getattr(record, "trace_id", "")
            record.span_id = getattr(record, "span_id", "")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    named = logging.getLevelNamesMapping().get(level.strip().upper())
    if named is None:
        raise TelemetryConfigError("LOG_LEVEL", f"unknown log level {level!r}")
    return named


class _OurHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler ``setup_logging`` installed, so a second call replaces it."""


def setup_logging(
    level: int | str = "INFO",
    fmt: LogFormat = "plain",
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Route all logging to ``stream`` (default stderr) in ``fmt``, with trace ids; idempotent.

    Replaces the handler an earlier call installed and leaves other handlers alone.
    """
    if fmt not in ("plain", "json"):
        raise TelemetryConfigError("LOG_FORMAT", f"expected 'plain' or 'json', got {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _OurHandler):
            root.removeHandler(handler)
    handler = _OurHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(_level(level))
    return handler


@attrs.frozen
class LoggingSettings:
    """``LOG_LEVEL`` (default INFO) and ``LOG_FORMAT`` (``plain`` or ``json``, default plain)."""

    level: str = "INFO"
    format: LogFormat = "plain"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LoggingSettings:
        level = (environ.get("LOG_LEVEL") or "INFO").strip().upper()
        _level(level)
        fmt = (environ.get("LOG_FORMAT") or "plain").strip().lower()
        if fmt == "json":
            return cls(level=level, format="json")
        if fmt == "plain":
            return cls(level=level, format="plain")
        raise TelemetryConfigError("LOG_FORMAT", f"expected 'plain' or 'json', got {fmt!r}")

    def apply(self, *, stream: IO[str] | None = None) -> logging.Handler:
        """``setup_logging`` with these settings."""
        return setup_logging(self.level, self.format, stream=stream)
