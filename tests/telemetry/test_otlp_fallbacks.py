"""The OTLP encoder and exporter when the SDK internals they read are not as expected."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as sdk_encode_spans,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

from orchestrator_telemetry import otlp_encoding, otlp_exporter
from orchestrator_telemetry.otlp_encoding import encode_spans, private_reads_problem
from orchestrator_telemetry.otlp_exporter import FastOTLPSpanExporter, sdk_export_problem


def _spans() -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    limits = SpanLimits(max_span_attributes=4, max_events=1, max_links=1)
    provider = TracerProvider(span_limits=limits, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t", "1.0")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        parent.set_attributes({"s": "x", "i": -3, "f": 1.5, "b": True, "dropped": 1})
        parent.add_event("e1", {"k": (1, 2)})
        parent.add_event("e2")
        link = Link(parent.get_span_context(), {"l": "v"})
        with tracer.start_as_current_span("child", links=[link, link]):
            pass
    return exporter.get_finished_spans()


def test_the_installed_sdk_passes_the_encoders_probe() -> None:
    assert private_reads_problem() is None
    assert otlp_encoding.PRIVATE_READS


def test_a_renamed_container_field_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    class Renamed(BoundedAttributes):
        def __getattribute__(self, name: str) -> object:
            if name == "_dict":
                raise AttributeError(name)
            return super().__getattribute__(name)

    monkeypatch.setattr(otlp_encoding, "BoundedAttributes", Renamed)
    assert private_reads_problem() is not None


@pytest.mark.parametrize("private_reads", [True, False], ids=["private reads", "public reads"])
def test_both_ways_the_bytes_are_the_sdks(
    private_reads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(otlp_encoding, "PRIVATE_READS", private_reads)
    spans = _spans()
    by_name = {span.name: span for span in spans}
    assert by_name["parent"].dropped_attributes == 1
    assert by_name["parent"].dropped_events == 1
    assert by_name["child"].dropped_links == 1
    assert encode_spans(spans) == sdk_encode_spans(spans).SerializePartialToString()


def test_the_installed_sdk_passes_the_exporters_probe() -> None:
    assert sdk_export_problem() is None
    assert FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces").fast


def test_a_changed_sdk_export_is_detected() -> None:
    def export(self: OTLPSpanExporter, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._new_helper(spans)  # type: ignore[attr-defined]
        return SpanExportResult.SUCCESS

    assert "_new_helper" in (sdk_export_problem(export) or "")


def test_after_a_failed_probe_export_is_the_sdks_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(otlp_exporter, "_PROBLEM", "OTLPSpanExporter.export changed")
    monkeypatch.setattr(otlp_exporter, "_logged_fallback", False)
    exported: list[Sequence[ReadableSpan]] = []

    def sdk_export(self: OTLPSpanExporter, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        exported.append(spans)
        return SpanExportResult.SUCCESS

    monkeypatch.setattr(OTLPSpanExporter, "export", sdk_export)
    with caplog.at_level(logging.INFO, logger=otlp_exporter.__name__):
        exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
        FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    spans = _spans()
    assert not exporter.fast
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exported == [spans]
    assert len([r for r in caplog.records if "internals" in r.message]) == 1


def test_an_exporter_missing_a_field_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self: OTLPSpanExporter, **kwargs: object) -> None:
        self._shutdown = False  # and none of the other fields

    monkeypatch.setattr(OTLPSpanExporter, "__init__", init)
    assert not FastOTLPSpanExporter().fast
