"""LogThrottle: one record per logger per interval, and a count of the ones held back."""

from __future__ import annotations

import logging

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_telemetry import TelemetrySettings, setup_telemetry
from orchestrator_telemetry.log_throttle import SDK_EXPORT_LOGGERS, LogThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(
    logger: str, msg: str = "Transient error %s, retrying", *args: object
) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": logger, "levelno": logging.WARNING, "msg": msg, "args": args or ("boom",)}
    )


def throttles_on_sdk_loggers() -> list[int]:
    return [
        sum(isinstance(f, LogThrottle) for f in logging.getLogger(name).filters)
        for name in SDK_EXPORT_LOGGERS
    ]


def test_the_first_record_of_each_logger_passes_and_repeats_within_the_interval_do_not() -> None:
    clock = FakeClock()
    throttle = LogThrottle(60, clock=clock)
    assert throttle.filter(record("sdk.a"))
    assert throttle.filter(record("sdk.b"))  # loggers are throttled independently
    clock.now += 59.9
    assert not throttle.filter(record("sdk.a"))
    assert not throttle.filter(record("sdk.a", "Failed to export %s batch", "spans"))
    assert not throttle.filter(record("sdk.b"))


def test_the_next_record_after_the_interval_says_how_many_were_held_back() -> None:
    clock = FakeClock()
    throttle = LogThrottle(60, clock=clock)
    throttle.filter(record("sdk.a"))
    for _ in range(5):
        clock.now += 10
        throttle.filter(record("sdk.a"))
    clock.now += 15
    passed = record("sdk.a", "Transient error %s, retrying", "refused")
    assert throttle.filter(passed)
    assert passed.getMessage() == (
        "Transient error refused, retrying"
        " [5 more from this logger in the last 65s were not logged]"
    )
    assert passed.suppressed_records == 5
    # A new window starts with the record let through: no count to report yet.
    clock.now += 61
    quiet = record("sdk.a")
    assert throttle.filter(quiet)
    assert quiet.getMessage() == "Transient error boom, retrying"
    assert not hasattr(quiet, "suppressed_records")


def test_drain_counts_what_is_held_back_and_lets_the_next_record_through() -> None:
    clock = FakeClock()
    throttle = LogThrottle(60, clock=clock)
    for name in ("sdk.a", "sdk.a", "sdk.a", "sdk.b", "sdk.b"):
        throttle.filter(record(name))
    assert throttle.drain() == 3
    assert throttle.drain() == 0
    assert throttle.filter(record("sdk.a"))


def test_providers_share_one_throttle_and_the_last_shutdown_removes_it() -> None:
    before = throttles_on_sdk_loggers()
    settings = TelemetrySettings.from_env({"APP_ID": "svc-test"})
    first = setup_telemetry(settings, set_global=False, exporter=InMemorySpanExporter())
    second = setup_telemetry(settings, set_global=False, exporter=InMemorySpanExporter())
    assert throttles_on_sdk_loggers() == [1] * len(SDK_EXPORT_LOGGERS)
    first.shutdown()
    first.shutdown()  # idempotent: releases once
    assert throttles_on_sdk_loggers() == [1] * len(SDK_EXPORT_LOGGERS)
    second.shutdown()
    assert throttles_on_sdk_loggers() == before


def test_telemetry_without_an_exporter_leaves_the_sdk_loggers_alone() -> None:
    before = throttles_on_sdk_loggers()
    telemetry = setup_telemetry(TelemetrySettings.from_env({"APP_ID": "x"}), set_global=False)
    assert throttles_on_sdk_loggers() == before
    telemetry.shutdown()
    assert throttles_on_sdk_loggers() == before
