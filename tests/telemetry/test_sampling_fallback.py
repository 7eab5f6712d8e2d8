"""When the SDK internals ``SamplingTracer`` leans on are not as expected, the SDK decides.

``sdk_internals_problem`` probes them when a ``SamplingTracerProvider`` is built; any surprise
makes the provider hand out the SDK's own tracers (logged once), whose spans are the same.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_telemetry import sampling
from orchestrator_telemetry.sampling import (
    SamplingTracer,
    SamplingTracerProvider,
    sdk_internals_problem,
)
from tests.telemetry.test_sampling import PARENTS, same_span, sdk_tracer

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C


@pytest.fixture(autouse=True)
def _log_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling, "_logged_fallback", False)


def _other_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Tracer.start_span

    def start_span(self: Tracer, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Tracer, "start_span", start_span)


def _other_span_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling, "_SPAN_KEY", "not-the-current-span-key")


def _ids_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the SDK stopped asking the id generator for a root's trace id.
    monkeypatch.setattr(
        sampling._PreDrawnIds, "generate_trace_id", sampling._PreDrawnIds.draw_trace_id
    )


CHANGES = {
    "start_span signature": _other_signature,
    "current-span key": _other_span_key,
    "trace id hand-over": _ids_not_taken,
}


def test_the_installed_sdk_passes_the_probe_and_gets_the_fast_tracer() -> None:
    assert sdk_internals_problem() is None
    provider = SamplingTracerProvider("parentbased_traceidratio", 0.5, shutdown_on_exit=False)
    assert provider.fast
    assert type(provider.get_tracer("t")) is SamplingTracer


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_internals_fall_back_to_the_sdks_tracer_and_log_once(
    change: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    CHANGES[change](monkeypatch)
    assert sdk_internals_problem() is not None
    with caplog.at_level(logging.INFO, logger=sampling.__name__):
        first = SamplingTracerProvider("parentbased_traceidratio", 0.5, shutdown_on_exit=False)
        SamplingTracerProvider("parentbased_traceidratio", 0.5, shutdown_on_exit=False)
    assert not first.fast
    assert type(first.get_tracer("t")) is Tracer
    assert len([r for r in caplog.records if "internals changed" in r.message]) == 1


@pytest.mark.parametrize("parent_name", list(PARENTS))
def test_after_a_fallback_spans_are_the_sdks(
    parent_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _other_span_key(monkeypatch)
    provider = SamplingTracerProvider("parentbased_traceidratio", 0.25, shutdown_on_exit=False)
    monkeypatch.setattr(provider.id_generator, "generate_trace_id", lambda: TRACE_ID)
    monkeypatch.setattr(provider.id_generator, "generate_span_id", lambda: 0x00F067AA0BA902B7)
    ours = provider.get_tracer("t")
    context = PARENTS[parent_name]
    same_span(
        ours.start_span("s", context),
        sdk_tracer("parentbased_traceidratio", TRACE_ID).start_span("s", context),
    )


def test_after_a_fallback_sampled_spans_are_exported_at_the_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _other_signature(monkeypatch)
    provider = SamplingTracerProvider("traceidratio", 0.25, shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for _ in range(4_000):
        with tracer.start_as_current_span("root") as span:
            span.set_attribute("k", 1)
    exported = exporter.get_finished_spans()
    assert 800 < len(exported) < 1_200  # 1,000 expected, standard deviation ~27
    assert all(dict(span.attributes or {}) == {"k": 1} for span in exported)
