"""W3C trace context travels in message headers, whatever the carrier's key and value types."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import attach, detach

from orchestrator_broker import Message
from orchestrator_telemetry import (
    current_span_id,
    current_trace_id,
    extract_context,
    inject_headers,
    inject_message,
    remote_span_context,
)
from tests.telemetry.conftest import SpanRecorder

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_inject_writes_traceparent_of_the_current_span(recorder: SpanRecorder) -> None:
    tracer = recorder.provider.get_tracer("test")
    with tracer.start_as_current_span("parent") as span:
        headers = inject_headers({"x-other": "kept"})
    ctx = span.get_span_context()
    assert headers["x-other"] == "kept"
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        trace.format_trace_id(ctx.trace_id),
        trace.format_span_id(ctx.span_id),
    )
    assert int(flags, 16) & 0x01  # sampled


def test_inject_outside_any_span_adds_no_trace_headers() -> None:
    assert inject_headers({"a": "b"}) == {"a": "b"}


def test_inject_replaces_stale_trace_headers(recorder: SpanRecorder) -> None:
    tracer = recorder.provider.get_tracer("test")
    with tracer.start_as_current_span("new"):
        headers = inject_headers({"Traceparent": TRACEPARENT, "tracestate": "old=1"})
    assert "Traceparent" not in headers
    assert "tracestate" not in headers
    assert headers["traceparent"] != TRACEPARENT


def test_inject_message_keeps_id_payload_and_other_headers(recorder: SpanRecorder) -> None:
    message = Message(payload={"n": 1}, headers={"tenant": "t1"})
    with recorder.provider.get_tracer("test").start_as_current_span("p"):
        traced = inject_message(message)
    assert (traced.id, traced.payload, traced.created_at) == (
        message.id,
        message.payload,
        message.created_at,
    )
    assert traced.headers["tenant"] == "t1"
    assert "traceparent" in traced.headers
    assert "traceparent" not in message.headers


def test_extract_from_str_headers() -> None:
    remote = remote_span_context({"traceparent": TRACEPARENT})
    assert remote is not None
    assert remote.is_remote
    assert trace.format_trace_id(remote.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert trace.format_span_id(remote.span_id) == "b7ad6b7169203331"


def test_extract_from_bytes_keys_and_values_as_redis_py_returns_them() -> None:
    carrier = {b"traceparent": TRACEPARENT.encode(), b"baggage": b"tenant=t1"}
    context = extract_context(carrier)
    span_context = trace.get_current_span(context).get_span_context()
    assert span_context.is_valid
    assert trace.format_trace_id(span_context.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert baggage.get_baggage("tenant", context) == "t1"


def test_extract_from_mixed_str_and_bytes() -> None:
    assert remote_span_context({"traceparent": TRACEPARENT.encode()}) is not None
    assert remote_span_context({b"traceparent": TRACEPARENT}) is not None


def test_extract_matches_header_names_case_insensitively() -> None:
    assert remote_span_context({"TraceParent": TRACEPARENT}) is not None


def test_extract_ignores_undecodable_bytes() -> None:
    assert remote_span_context({b"traceparent": b"\xff\xfe"}) is None


def test_extract_without_trace_headers_gives_no_parent() -> None:
    assert remote_span_context({}) is None
    assert remote_span_context({"traceparent": "garbage"}) is None


def test_baggage_round_trips(recorder: SpanRecorder) -> None:
    token = attach(baggage.set_baggage("tenant", "acme"))
    try:
        with recorder.provider.get_tracer("test").start_as_current_span("p"):
            headers = inject_headers()
    finally:
        detach(token)
    assert baggage.get_baggage("tenant", extract_context(headers)) == "acme"


def test_current_ids_inside_and_outside_a_span(recorder: SpanRecorder) -> None:
    assert current_trace_id() is None
    assert current_span_id() is None
    with recorder.provider.get_tracer("test").start_as_current_span("p") as span:
        ctx = span.get_span_context()
        assert current_trace_id() == trace.format_trace_id(ctx.trace_id)
        assert current_span_id() == trace.format_span_id(ctx.span_id)


def test_tracestate_is_carried_on_to_child_spans(recorder: SpanRecorder) -> None:
    parent = extract_context({"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    with recorder.provider.get_tracer("test").start_as_current_span("child", context=parent):
        headers = inject_headers()
    assert headers["tracestate"] == "vendor=abc"
    assert headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(
    "carrier",
    [
        {},
        {"traceparent": TRACEPARENT, "x": "y"},
        {b"traceparent": TRACEPARENT.encode(), b"baggage": b"k=v"},
        {"Traceparent": "bad", "traceparent": TRACEPARENT},
        {"TRACEPARENT": TRACEPARENT, "TraceParent": "second"},
        {b"traceparent": b"bytes-first", "traceparent": TRACEPARENT},
        {"Traceparent": TRACEPARENT, b"traceparent": b"exact-bytes"},
        {"traceparent": b"\xff\xfe", "TRACEPARENT": TRACEPARENT},
        {b"\xff": b"x", "tracestate": "a=b", "Baggage": "k=v"},
    ],
)
def test_the_one_pass_header_pick_matches_the_getter(carrier: dict[Any, Any]) -> None:
    from orchestrator_telemetry.propagation import TRACE_HEADERS, HeadersGetter, _trace_headers

    getter = HeadersGetter()
    expected = {}
    for name in TRACE_HEADERS:
        value = getter.get(carrier, name)
        if value is not None:
            expected[name] = value[0]
    assert _trace_headers(carrier) == expected


@pytest.mark.parametrize(
    "value",
    [
        TRACEPARENT,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ",
        "garbage",
    ],
)
def test_the_traceparent_fast_path_extracts_what_the_propagator_does(value: str) -> None:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    expected = TraceContextTextMapPropagator().extract({"traceparent": value})
    got = extract_context({"traceparent": value})
    assert trace.get_current_span(got).get_span_context() == (
        trace.get_current_span(expected).get_span_context()
    )
