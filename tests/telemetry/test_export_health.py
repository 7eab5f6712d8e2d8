"""A collector that is down: one warning, throttled SDK complaints, one line when it is back."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from opentelemetry.sdk.trace.export import SpanExportResult

from orchestrator_telemetry import Telemetry, TelemetrySettings, setup_telemetry
from orchestrator_telemetry.export_health import (
    ExportHealth,
    ProblemNotingSession,
    describe_error,
    problem_noting_session,
)
from orchestrator_telemetry.log_throttle import SDK_EXPORT_LOGGERS, LogThrottle
from tests.support.otlp_receiver import OtlpReceiver

SUCCESS, FAILURE = SpanExportResult.SUCCESS, SpanExportResult.FAILURE
PASSWORD = "hunter2-userinfo"
TOKEN = "s3cret-header-token"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    """A loopback port nothing listens on (free again once this returns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def messages(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(logger) and text in r.getMessage()
    ]


# -- ExportHealth on its own ------------------------------------------------------------------


def test_an_outage_is_reported_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    session = ProblemNotingSession()
    health = ExportHealth(
        "http://collector:4318/v1/traces",
        session=session,
        throttle=LogThrottle(60, clock=clock),
        clock=clock,
    )
    caplog.set_level(logging.INFO, logger="orchestrator_telemetry")
    health.observe(SUCCESS, 5)
    for _ in range(3):
        session.problem = "connection refused"
        health.observe(FAILURE, 10)
        clock.now += 14
    assert health.failing
    assert (health.dropped_batches, health.dropped_spans) == (3, 30)
    health.observe(SUCCESS, 4)
    health.observe(SUCCESS, 4)

    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (
            logging.WARNING,
            "telemetry: spans to http://collector:4318/v1/traces are being dropped: connection"
            " refused; export errors are logged at most once a minute until it recovers",
        ),
        (
            logging.INFO,
            "telemetry: collector at http://collector:4318/v1/traces reachable again after 42s;"
            " dropped meanwhile: 3 batches (30 spans)",
        ),
    ]
    assert not health.failing
    assert (health.dropped_batches, health.dropped_spans) == (0, 0)


def test_the_recovery_line_counts_the_sdk_records_that_were_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    throttle = LogThrottle(60, clock=clock)
    health = ExportHealth("http://c/v1/traces", throttle=throttle, clock=clock)
    for _ in range(4):  # one passes, three are held back
        throttle.filter(logging.makeLogRecord({"name": "sdk", "msg": "Transient error"}))
    caplog.set_level(logging.INFO, logger="orchestrator_telemetry")
    health.observe(FAILURE, 1)
    health.observe(SUCCESS, 1)
    warning, info = (r.getMessage() for r in caplog.records)
    assert warning.endswith(
        "being dropped: export failed; export errors are logged at most"
        " once a minute until it recovers"
    )
    assert info.endswith(
        "dropped meanwhile: 1 batch (1 span); 3 repeated export log records not logged"
    )
    assert throttle.drain() == 0  # reported once, not again at the next recovery


def test_a_refused_connection_is_described_in_two_words() -> None:
    with pytest.raises(requests.ConnectionError) as caught:
        requests.post(f"http://127.0.0.1:{closed_port()}/v1/traces", data=b"", timeout=5)
    assert describe_error(caught.value) == "connection refused"


@pytest.fixture
def unavailable_collector() -> Iterator[str]:
    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/traces"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_the_session_notes_an_http_error_status_and_forgets_it_once_taken(
    unavailable_collector: str,
) -> None:
    with ProblemNotingSession() as session:
        assert session.post(unavailable_collector, data=b"", timeout=5).status_code == 503
        assert session.take_problem() == "HTTP 503 Service Unavailable"
        assert session.take_problem() is None


def test_a_configured_credential_provider_keeps_the_sdks_own_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(problem_noting_session(), ProblemNotingSession)
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "gcp")
    assert problem_noting_session() is None  # ours would replace the provider's session


# -- a real exporter against a dead, then live, collector ------------------------------------


@pytest.fixture
def dead_collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Telemetry]]:
    """Telemetry exporting to a closed port, with short batches and exporter timeouts.

    Credentials in the URL's userinfo and a header, to check that no log line shows them.
    """
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # read by the BatchSpanProcessor
    port = closed_port()
    telemetry = setup_telemetry(
        TelemetrySettings.from_env(
            {
                "APP_ID": "svc-test",
                "JAEGER_URI": f"http://user:{PASSWORD}@127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-token={TOKEN}",
                # One retry (after ~1 s) per batch, then the batch is dropped.
                "OTEL_EXPORTER_OTLP_TIMEOUT": "1.5",
            }
        ),
        set_global=False,
    )
    yield port, telemetry
    telemetry.shutdown(timeout=0.2)


def emit_spans_until(
    telemetry: Telemetry, name: str, done: Callable[[], bool], timeout: float = 20.0
) -> None:
    """End a span every few milliseconds until ``done()``; the timeout only guards a hang."""
    tracer = telemetry.tracer("test")
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting after {timeout}s")
        with tracer.start_as_current_span(name):
            pass
        time.sleep(0.02)


def assert_no_credentials(caplog: pytest.LogCaptureFixture) -> None:
    for r in caplog.records:
        assert PASSWORD not in r.getMessage()
        assert TOKEN not in r.getMessage()


def test_a_dead_collector_gets_one_warning_and_the_sdk_logs_once_per_logger(
    dead_collector: tuple[int, Telemetry], caplog: pytest.LogCaptureFixture
) -> None:
    port, telemetry = dead_collector
    health = telemetry.export_health
    assert health is not None
    caplog.set_level(logging.INFO)
    emit_spans_until(telemetry, "doomed", lambda: health.dropped_batches >= 3)
    telemetry.shutdown(timeout=0.2)

    (warning,) = messages(caplog, "orchestrator_telemetry", "being dropped")
    assert warning == (
        f"telemetry: spans to http://127.0.0.1:{port}/v1/traces are being dropped: connection"
        " refused; export errors are logged at most once a minute until it recovers"
    )
    # Each batch made the exporter log a retry warning and a "failed to export" error;
    # within the (one minute) window each SDK logger got one line through.
    per_logger = {name: 0 for name in SDK_EXPORT_LOGGERS}
    for r in caplog.records:
        if r.name in per_logger:
            per_logger[r.name] += 1
    assert per_logger["opentelemetry.exporter.otlp.proto.http.trace_exporter"] == 1
    assert max(per_logger.values()) == 1
    assert_no_credentials(caplog)


def test_a_collector_that_comes_back_gets_one_info_line_and_the_new_spans(
    dead_collector: tuple[int, Telemetry], caplog: pytest.LogCaptureFixture
) -> None:
    port, telemetry = dead_collector
    health = telemetry.export_health
    assert health is not None
    caplog.set_level(logging.INFO)
    emit_spans_until(telemetry, "doomed", lambda: health.dropped_batches >= 2)

    with OtlpReceiver(port=port).in_thread() as receiver:
        emit_spans_until(
            telemetry, "delivered", lambda: bool(receiver.named("delivered")) and not health.failing
        )
        telemetry.shutdown()  # joins the export thread: every log line is in by now

    (info,) = messages(caplog, "orchestrator_telemetry", "reachable again")
    assert info.startswith(f"telemetry: collector at http://127.0.0.1:{port}/v1/traces reachable")
    dropped = int(info.partition("dropped meanwhile: ")[2].split()[0])
    assert dropped >= 2
    assert len(messages(caplog, "orchestrator_telemetry", "being dropped")) == 1
    assert {span.service_name for span in receiver.spans} == {"svc-test"}
    assert receiver.headers[-1]["x-api-token"] == TOKEN  # still sent, never logged
    assert_no_credentials(caplog)
