"""The test OTLP receiver works from synchronous tests too (it serves from its own thread)."""

from __future__ import annotations

from orchestrator_telemetry import TelemetrySettings, setup_telemetry
from tests.support.otlp_receiver import OtlpReceiver


def test_receiver_in_a_thread_collects_spans_from_a_sync_exporter() -> None:
    with OtlpReceiver().in_thread() as receiver:
        telemetry = setup_telemetry(
            TelemetrySettings.from_env(
                {"APP_ID": "sync-svc", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.traces_url}
            ),
            set_global=False,
        )
        tracer = telemetry.tracer("t")
        with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner"):
            pass
        telemetry.shutdown()
        spans = receiver.wait_for_sync(lambda s: len(s) == 2, timeout=30)
    outer, inner = sorted(spans, key=lambda span: span.name, reverse=True)
    assert (outer.name, inner.name) == ("outer", "inner")
    assert inner.parent_span_id == outer.span_id
    assert outer.parent_span_id == ""
    assert {span.service_name for span in spans} == {"sync-svc"}
    assert receiver.requests == 1
