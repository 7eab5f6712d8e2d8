"""setup_telemetry: export when configured, stay quiet (but keep trace ids) when not."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_telemetry import (
    ContextOnlyTracerProvider,
    TelemetrySettings,
    current_trace_id,
    extract_context,
    inject_headers,
    setup_telemetry,
)
from tests.support.otlp_receiver import OtlpReceiver

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def settings(**environ: str) -> TelemetrySettings:
    return TelemetrySettings.from_env({"APP_ID": "svc-test", **environ})


def test_unconfigured_tracing_has_no_exporter_but_real_trace_ids(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    threads_before = threading.active_count()
    with caplog.at_level(logging.DEBUG):
        telemetry = setup_telemetry(settings(), set_global=False)
        assert telemetry.exporter is None
        assert not telemetry.exporting
        # Nothing is exported, so nothing is recorded: only span contexts are made.
        assert isinstance(telemetry.tracer_provider, ContextOnlyTracerProvider)
        assert threading.active_count() == threads_before  # no export worker thread
        with telemetry.tracer("test").start_as_current_span("request") as span:
            assert not span.is_recording()
            assert span.get_span_context().is_valid
            assert current_trace_id() is not None
            assert "traceparent" in inject_headers()
        telemetry.shutdown()
        telemetry.shutdown()  # idempotent
    assert [r for r in caplog.records if r.name.startswith("opentelemetry")] == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_unconfigured_tracing_continues_an_incoming_trace() -> None:
    telemetry = setup_telemetry(settings(), set_global=False)
    parent = extract_context({"traceparent": TRACEPARENT})
    with telemetry.tracer("test").start_as_current_span("child", context=parent) as span:
        assert current_trace_id() == "0af7651916cd43dd8448eb211c80319c"
        assert span.get_span_context().span_id != int("b7ad6b7169203331", 16)
        assert span.get_span_context().trace_flags.sampled  # the caller's decision, passed on
    telemetry.shutdown()


def test_an_exporter_passed_in_records_even_without_an_endpoint() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(settings(), set_global=False, exporter=exporter)
    assert isinstance(telemetry.tracer_provider, TracerProvider)
    with telemetry.tracer("test").start_as_current_span("recorded") as span:
        assert span.is_recording()
    telemetry.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["recorded"]


def test_sdk_disabled_uses_a_no_op_provider_that_passes_context_through() -> None:
    telemetry = setup_telemetry(settings(OTEL_SDK_DISABLED="true"), set_global=False)
    assert telemetry.exporter is None
    assert isinstance(telemetry.tracer_provider, trace.NoOpTracerProvider)
    tracer = telemetry.tracer("test")
    with tracer.start_as_current_span("x") as span:
        assert not span.get_span_context().is_valid
    with tracer.start_as_current_span("x", context=extract_context({"traceparent": TRACEPARENT})):
        assert current_trace_id() == "0af7651916cd43dd8448eb211c80319c"
    telemetry.shutdown()


def test_resource_carries_service_identity_and_extra_attributes() -> None:
    telemetry = setup_telemetry(
        settings(OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=staging"),
        set_global=False,
        exporter=InMemorySpanExporter(),  # a recording provider: the resource goes with spans
    )
    assert isinstance(telemetry.tracer_provider, TracerProvider)
    attributes = telemetry.tracer_provider.resource.attributes
    assert attributes["service.name"] == "svc-test"
    assert attributes["service.version"] == telemetry.settings.service_version
    assert attributes["service.instance.id"] == telemetry.settings.instance_id
    assert attributes["deployment.environment.name"] == "staging"
    assert attributes["telemetry.sdk.language"] == "python"
    telemetry.shutdown()


def test_always_off_sampler_still_makes_trace_ids_for_responses() -> None:
    telemetry = setup_telemetry(settings(OTEL_TRACES_SAMPLER="always_off"), set_global=False)
    with telemetry.tracer("test").start_as_current_span("x") as span:
        assert not span.is_recording()
        assert current_trace_id() is not None
    telemetry.shutdown()


@pytest.mark.parametrize("compression", ["none", "gzip", "deflate"])
async def test_spans_reach_the_collector_named_by_jaeger_uri(compression: str) -> None:
    async with OtlpReceiver() as receiver:
        telemetry = setup_telemetry(
            settings(
                JAEGER_URI=receiver.host_port,
                OTEL_EXPORTER_OTLP_COMPRESSION=compression,
                OTEL_EXPORTER_OTLP_HEADERS="x-test-token=abc",
            ),
            set_global=False,
        )
        assert telemetry.exporting
        with telemetry.tracer("test").start_as_current_span("exported") as span:
            trace_id = trace.format_trace_id(span.get_span_context().trace_id)
        await telemetry.aclose()  # flushes the batch processor
        spans = await receiver.wait_for(lambda s: any(x.name == "exported" for x in s))
    (received,) = [s for s in spans if s.name == "exported"]
    assert received.trace_id == trace_id
    assert received.service_name == "svc-test"
    assert received.kind == "INTERNAL"
    assert receiver.headers[0]["x-test-token"] == "abc"
    assert receiver.encodings[0] == ("" if compression == "none" else compression)


async def test_shutdown_flushes_spans_still_in_the_batch() -> None:
    async with OtlpReceiver() as receiver:
        telemetry = setup_telemetry(
            settings(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url), set_global=False
        )
        tracer = telemetry.tracer("test")
        for n in range(50):
            with tracer.start_as_current_span(f"span-{n}"):
                pass
        await telemetry.aclose()
        # No waiting: shutdown returned only after the export.
        assert len(receiver.spans) == 50


async def test_shutdown_gives_up_on_a_collector_that_keeps_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def unavailable(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=503)  # retryable: the exporter would back off for 60 s

    app = web.Application()
    app.router.add_post("/v1/traces", unavailable)
    async with TestServer(app, host="127.0.0.1") as server:
        telemetry = setup_telemetry(
            settings(JAEGER_URI=f"127.0.0.1:{server.port}", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="60"),
            set_global=False,
        )
        with telemetry.tracer("test").start_as_current_span("doomed"):
            pass
        # 30 s is only a hang guard: without the abort this takes the full 60 s export timeout.
        await asyncio.wait_for(telemetry.aclose(timeout=0.5), timeout=30)
    assert calls >= 1
    assert any("did not take spans" in record.getMessage() for record in caplog.records)


def test_setting_up_twice_in_one_process_keeps_the_first_global_quietly() -> None:
    # In a child process: the global provider can be set once per process.
    script = """
import logging, sys
from opentelemetry import trace
from orchestrator_telemetry import TelemetrySettings, setup_telemetry
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
first = setup_telemetry(TelemetrySettings.from_env({"APP_ID": "one"}))
second = setup_telemetry(TelemetrySettings.from_env({"APP_ID": "two"}))
assert trace.get_tracer_provider() is first.tracer_provider
with trace.get_tracer("x").start_as_current_span("s") as span:
    assert span.get_span_context().is_valid
first.shutdown()
second.shutdown()
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "ok", "")


def test_a_legacy_jaeger_port_in_jaeger_uri_gets_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator_telemetry"):
        telemetry = setup_telemetry(settings(JAEGER_URI="jaeger:14268"), set_global=False)
    telemetry.shutdown(timeout=0.1)
    (record,) = [r for r in caplog.records if r.name.startswith("orchestrator_telemetry")]
    assert "14268" in record.getMessage()
    assert "4318" in record.getMessage()
