"""Log records name the trace and span they were written in, in plain or JSON lines."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from opentelemetry import trace

from orchestrator_telemetry import LoggingSettings, TelemetryConfigError, setup_logging
from tests.telemetry.conftest import SpanRecorder


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


pytestmark = pytest.mark.usefixtures("restore_root_logger")


def test_json_lines_carry_trace_and_span_ids(recorder: SpanRecorder) -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    log = logging.getLogger("orchestrator.test")
    with recorder.provider.get_tracer("t").start_as_current_span("work") as span:
        log.info("task %s accepted", "t-1", extra={"task_id": "t-1", "attempt": 2})
    log.debug("not shown")
    log.warning("outside")
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    ctx = span.get_span_context()
    assert first["message"] == "task t-1 accepted"
    assert first["level"] == "INFO"
    assert first["logger"] == "orchestrator.test"
    assert first["trace_id"] == trace.format_trace_id(ctx.trace_id)
    assert first["span_id"] == trace.format_span_id(ctx.span_id)
    assert (first["task_id"], first["attempt"]) == ("t-1", 2)
    assert first["ts"].endswith("+00:00")
    assert (second["trace_id"], second["span_id"]) == ("", "")


def test_json_exceptions_stay_on_one_line() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (line,) = out.getvalue().splitlines()
    entry = orjson.loads(line)
    assert "ValueError: boom" in entry["exc"]


def test_json_survives_unserialisable_extras() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    logging.getLogger("x").info("odd", extra={"thing": object()})
    assert orjson.loads(out.getvalue())["thing"].startswith("<object")


def test_plain_lines_carry_trace_ids(recorder: SpanRecorder) -> None:
    out = io.StringIO()
    setup_logging("DEBUG", "plain", stream=out)
    with recorder.provider.get_tracer("t").start_as_current_span("work") as span:
        logging.getLogger("svc").debug("hello")
    line = out.getvalue().strip()
    trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    assert f"trace_id={trace_id}" in line
    assert line.endswith(
        "DEBUG svc [trace_id="
        + trace_id
        + " span_id="
        + trace.format_span_id(span.get_span_context().span_id)
        + "] hello"
    )


def test_setting_up_twice_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "plain", stream=first)
    setup_logging("INFO", "json", stream=second)
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert orjson.loads(second.getvalue())["message"] == "once"


def test_bad_level_or_format_is_a_config_error() -> None:
    with pytest.raises(TelemetryConfigError, match="LOG_LEVEL"):
        setup_logging("LOUD")
    with pytest.raises(TelemetryConfigError, match="LOG_FORMAT"):
        setup_logging("INFO", "xml")  # type: ignore[arg-type]


def test_logging_settings_from_env() -> None:
    assert LoggingSettings.from_env({}) == LoggingSettings("INFO", "plain")
    assert LoggingSettings.from_env({"LOG_LEVEL": "debug", "LOG_FORMAT": "JSON"}) == (
        LoggingSettings("DEBUG", "json")
    )
    with pytest.raises(TelemetryConfigError, match="LOG_LEVEL"):
        LoggingSettings.from_env({"LOG_LEVEL": "chatty"})
    with pytest.raises(TelemetryConfigError, match="LOG_FORMAT"):
        LoggingSettings.from_env({"LOG_FORMAT": "yaml"})
