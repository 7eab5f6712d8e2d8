"""encode_spans writes what the SDK's OTLP encoder writes, and the exporter sends it.

The reference is the SDK itself: every batch here is encoded by both, and ours must parse to
a message equal to the SDK's (``==`` on protobuf messages sees field presence, order of
repeated fields, and the grouping into resources and scopes), and in fact be the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as sdk_encode_spans,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from orchestrator_telemetry import (
    TelemetrySettings,
    extract_context,
    otlp_exporter,
    setup_telemetry,
)
from orchestrator_telemetry.otlp_encoding import SpanEncodingError, encode_spans
from orchestrator_telemetry.otlp_exporter import FastOTLPSpanExporter
from orchestrator_telemetry.setup import build_exporter
from tests.support.otlp_receiver import OtlpReceiver

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

#: One attribute of every kind the SDK encodes, at the edges of each.
EVERY_VALUE: dict[str, Any] = {
    "messaging.system": "redis",
    "empty": "",
    "unicode": "naïve ☃ 𝄞 \x00",
    "long": "x" * 300,
    "short.then.long": "y" * 127,
    "true": True,
    "false": False,
    "zero": 0,
    "small": 127,
    "port": 8080,
    "int64.max": INT64_MAX,
    "int64.min": INT64_MIN,
    "negative": -1,
    "float": 1.5,
    "negative.zero": -0.0,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "bytes": b"\x00\xff",
    "no.bytes": b"",
    "none": None,
    "strings": ("a", "", "ü"),
    "bools": (True, False),
    "ints": (0, -1, INT64_MAX, INT64_MIN),
    "floats": (0.5, math.nan, -math.inf),
    "no.items": (),
    "mixed": ("a", 1, None, 2.5, b"b", True),
    "nested": (("a",), (1, (2, ())), {"k": "v"}),
    "mapping": {"k": "v", "n": {"deep": (1, 2)}, "none": None},
    "no.mapping": {},
    "ключ": "значение",
    "k" * 200: "a key longer than 127 bytes",
}


def assert_encoded_like_the_sdk(spans: Sequence[ReadableSpan]) -> bytes:
    ours = encode_spans(spans)
    expected = sdk_encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(ours) == expected
    # Stronger than needed, and true of protobuf's upb runtime today: the very same bytes
    # (a default-valued scalar written out would still parse to an equal message).
    assert ours == expected.SerializePartialToString()
    return ours


class Recorded:
    """A tracer provider of its own (resource, limits) that keeps its finished spans."""

    def __init__(self, resource: Resource | None = None, limits: SpanLimits | None = None):
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=resource or Resource({"service.name": "svc-test"}),
            span_limits=limits,
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    recorded = Recorded()
    yield recorded
    recorded.provider.shutdown()


def context(*, remote: bool = False, trace_state: TraceState | None = None) -> SpanContext:
    return SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=remote,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=trace_state,
    )


# -- hand-picked spans -------------------------------------------------------------------------


def test_an_empty_batch_is_an_empty_request() -> None:
    assert assert_encoded_like_the_sdk([]) == b""


def test_attributes_of_every_kind(recorded: Recorded) -> None:
    with recorded.provider.get_tracer("t").start_as_current_span("s", attributes=EVERY_VALUE):
        pass
    assert_encoded_like_the_sdk(recorded.spans)
    assert set(recorded.spans[0].attributes or {}) == set(EVERY_VALUE)  # none lost on the way


@pytest.mark.parametrize("kind", list(SpanKind))
def test_every_span_kind(recorded: Recorded, kind: SpanKind) -> None:
    with recorded.provider.get_tracer("t").start_as_current_span("s", kind=kind):
        pass
    assert_encoded_like_the_sdk(recorded.spans)


def test_events_with_and_without_attributes(recorded: Recorded) -> None:
    with recorded.provider.get_tracer("t").start_as_current_span("s") as span:
        span.add_event("retry", {"attempt": 2, "reason": "timeout", "delay": 0.5})
        span.add_event("bare")
        span.add_event("", {"unnamed": True}, timestamp=1)
        span.add_event("at zero", timestamp=0)
        span.add_event("every kind", EVERY_VALUE)
    assert_encoded_like_the_sdk(recorded.spans)


def test_links_to_local_and_remote_contexts(recorded: Recorded) -> None:
    tracer = recorded.provider.get_tracer("t")
    with tracer.start_as_current_span("other") as other:
        pass
    links = [
        Link(context(remote=True), {"messaging.message.id": "1-0", "n": 1}),
        Link(other.get_span_context()),
        Link(context(trace_state=TraceState([("vendor", "v")])), EVERY_VALUE),
    ]
    with tracer.start_as_current_span("s", links=links):
        pass
    assert_encoded_like_the_sdk(recorded.spans)


@pytest.mark.parametrize(
    "status",
    [
        Status(StatusCode.UNSET),
        Status(StatusCode.OK),
        Status(StatusCode.ERROR),
        Status(StatusCode.ERROR, "boom"),
        Status(StatusCode.ERROR, "ünïcode " * 40),
    ],
    ids=["unset", "ok", "error", "error-described", "error-long"],
)
def test_statuses(recorded: Recorded, status: Status) -> None:
    with recorded.provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_status(status)
    assert_encoded_like_the_sdk(recorded.spans)


def test_root_local_parent_and_remote_parent_with_trace_state(recorded: Recorded) -> None:
    tracer = recorded.provider.get_tracer("t")
    with tracer.start_as_current_span("root"), tracer.start_as_current_span("local child"):
        pass
    remote = extract_context({"traceparent": TRACEPARENT, "tracestate": "vendor=v,other=o"})
    with tracer.start_as_current_span("remote child", context=remote):
        pass
    remote_child = next(span for span in recorded.spans if span.name == "remote child")
    assert remote_child.parent is not None
    assert remote_child.parent.is_remote
    assert remote_child.context is not None
    assert remote_child.context.trace_state  # carried over
    assert_encoded_like_the_sdk(recorded.spans)


def test_a_span_under_a_non_recording_remote_parent(recorded: Recorded) -> None:
    parent = set_span_in_context(NonRecordingSpan(context(remote=True)))
    with recorded.provider.get_tracer("t").start_as_current_span("s", context=parent):
        pass
    assert_encoded_like_the_sdk(recorded.spans)


def test_dropped_attributes_events_and_links_are_counted() -> None:
    limits = SpanLimits(
        max_span_attributes=2,
        max_events=1,
        max_links=1,
        max_event_attributes=1,
        max_link_attributes=1,
    )
    recorded = Recorded(limits=limits)
    links = [Link(context(), {"a": 1, "b": 2}), Link(context(remote=True), {"c": 3})]
    tracer = recorded.provider.get_tracer("t")
    with tracer.start_as_current_span("s", attributes={"a": 1, "b": 2, "c": 3}, links=links) as s:
        s.add_event("first", {"a": 1, "b": 2})
        s.add_event("second", {"a": 1, "b": 2, "c": 3})
    (span,) = recorded.spans
    assert (span.dropped_attributes, span.dropped_events, span.dropped_links) == (1, 1, 1)
    assert_encoded_like_the_sdk(recorded.spans)


def test_resources_and_scopes_group_in_first_seen_order() -> None:
    first = Recorded(Resource({"service.name": "a"}, schema_url="https://opentelemetry.io/s/1"))
    second = Recorded(Resource({"service.name": "b", "service.version": "2"}))
    tracers = [
        first.provider.get_tracer("x"),
        second.provider.get_tracer("x", "1.0", schema_url="https://example.com/schema"),
        first.provider.get_tracer("y", "2.0", attributes={"scope.attr": "v", "n": 1}),
        second.provider.get_tracer("z"),
    ]
    for n in range(12):  # interleaved: a/x, b/x, a/y, b/z, a/x, ...
        with tracers[n % 4].start_as_current_span(f"span-{n}"):
            pass
    batch = sorted(first.spans + second.spans, key=lambda span: span.name[5:].zfill(2))
    request = ExportTraceServiceRequest.FromString(assert_encoded_like_the_sdk(batch))
    assert [len(r.scope_spans) for r in request.resource_spans] == [2, 2]


def test_equal_resources_and_scopes_share_a_group_encoded_as_the_first() -> None:
    # == but encoded differently: another key order, 1 == True.
    first = Recorded(Resource({"k": 1, "j": "x"}))
    second = Recorded(Resource({"j": "x", "k": 1}))
    spans: list[ReadableSpan] = []
    for recorded, flag in ((first, 1), (second, True), (first, True)):
        tracer = recorded.provider.get_tracer("s", "1", attributes={"flag": flag})
        with tracer.start_as_current_span("s"):
            pass
        spans.extend(recorded.spans)
        recorded.exporter.clear()
    request = ExportTraceServiceRequest.FromString(assert_encoded_like_the_sdk(spans))
    assert len(request.resource_spans) == 1


def test_the_tracers_own_span_objects_encode_as_their_snapshots() -> None:
    recorded = Recorded()
    span = recorded.provider.get_tracer("t").start_span("s", attributes=EVERY_VALUE)
    span.add_event("e", {"k": "v"})
    span.end()
    assert_encoded_like_the_sdk([span])  # type: ignore[list-item]
    assert encode_spans([span]) == encode_spans(recorded.spans)  # type: ignore[list-item]


def test_spans_built_by_hand_without_scope_or_times() -> None:
    resource = Resource({"service.name": "manual"}, schema_url="https://example.com/r")
    spans = [
        ReadableSpan("no scope", context(), resource=resource, attributes={"k": "v"}),
        ReadableSpan(
            "",
            context(trace_state=TraceState([("a", "1"), ("b", "2")])),
            parent=context(remote=True),
            resource=resource,
            attributes=EVERY_VALUE,
            events=(Event("e", {"k": [1, 2]}, timestamp=5),),
            links=(Link(context(), {"k": {"nested": ["a", 1]}}),),
            kind=SpanKind.PRODUCER,
            status=Status(StatusCode.ERROR, "bad"),
            start_time=1,
            end_time=2**64 - 1,
            instrumentation_scope=InstrumentationScope("manual", schema_url="https://s"),
        ),
    ]
    assert_encoded_like_the_sdk(spans)


def test_more_resources_and_keys_than_the_caches_hold() -> None:
    for n in range(300):
        resource = Resource({"service.name": f"svc-{n}"})
        attributes = {f"key.{n}.{i}": f"value-{i}" for i in range(8)}
        assert_encoded_like_the_sdk([ReadableSpan("s", context(), resource=resource)])
        assert_encoded_like_the_sdk(
            [ReadableSpan("s", context(), resource=resource, attributes=attributes)]
        )


# -- what the SDK drops or fails on --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [INT64_MAX + 1, INT64_MIN - 1, ("ok", 2**64), object(), "\ud800", {"k": object()}],
    ids=["int64-max+1", "int64-min-1", "nested-int", "object", "surrogate", "nested-object"],
)
def test_a_value_the_sdk_drops_goes_to_the_sdk_encoder_and_is_logged_once(
    value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spans = [
        ReadableSpan(
            "s",
            context(),
            resource=Resource({}),
            attributes={"before": 1, "odd": value, "after": "a"},
        )
    ]
    with pytest.raises(SpanEncodingError):
        encode_spans(spans)
    exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    expected = sdk_encode_spans(spans).SerializePartialToString()
    with caplog.at_level(logging.DEBUG, logger="orchestrator_telemetry"):
        assert exporter.encode(spans) == expected  # "odd" dropped, the span kept
        assert exporter.encode(spans) == expected
    ours = [r for r in caplog.records if r.name.startswith("orchestrator_telemetry")]
    assert [r.levelno for r in ours] == [logging.DEBUG]
    exporter.shutdown()


def test_an_id_out_of_range_fails_as_in_the_sdk() -> None:
    span = ReadableSpan("s", SpanContext(2**128, 1, is_remote=False), resource=Resource({}))
    with pytest.raises(SpanEncodingError):
        encode_spans([span])
    with pytest.raises(OverflowError):
        sdk_encode_spans([span])
    exporter = FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    assert exporter.export([span]) is SpanExportResult.FAILURE  # before any request
    exporter.shutdown()


# -- hypothesis: random spans ----------------------------------------------------------------------

INTS = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
SCALARS = st.one_of(st.none(), st.booleans(), st.text(), INTS, st.floats(), st.binary(max_size=20))
HOMOGENEOUS = st.one_of(
    *(st.lists(s, max_size=4).map(tuple) for s in (st.text(), st.booleans(), INTS, st.floats()))
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(tuple),
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=6), children, max_size=3),
    ),
    max_leaves=8,
)
ATTRIBUTES = st.dictionaries(
    st.text(max_size=12), st.one_of(SCALARS, HOMOGENEOUS, VALUES), max_size=6
)

RESOURCES = [
    Resource({"service.name": "a"}, schema_url="https://opentelemetry.io/schemas/1.26.0"),
    Resource({"service.name": "a"}, schema_url="https://opentelemetry.io/schemas/1.26.0"),
    Resource({"k": 1, "j": "x"}),
    Resource({"j": "x", "k": 1}),
    Resource({}),
    Resource(EVERY_VALUE),
]
SCOPES = [
    None,
    InstrumentationScope("a"),
    InstrumentationScope("a"),
    InstrumentationScope("b", "1.0", "https://example.com/schema", {"x": 1}),
    InstrumentationScope("b", "1.0", "https://example.com/schema", {"x": True}),
    InstrumentationScope("", None),
]
TRACE_STATES = [TraceState(), TraceState([("vendor", "v")]), TraceState([("a", "1"), ("b", "=")])]


@st.composite
def span_contexts(draw: st.DrawFn) -> SpanContext:
    return SpanContext(
        trace_id=draw(st.integers(0, 2**128 - 1)),
        span_id=draw(st.integers(0, 2**64 - 1)),
        is_remote=draw(st.booleans()),
        trace_state=draw(st.sampled_from(TRACE_STATES)),
    )


@st.composite
def bounded(draw: st.DrawFn, attributes: dict[str, Any]) -> Any:
    """``attributes`` as they are, or in ``BoundedAttributes`` that may drop some."""
    if draw(st.booleans()):
        return attributes
    return BoundedAttributes(maxlen=draw(st.none() | st.integers(0, 4)), attributes=attributes)


class SubclassedSpan(ReadableSpan):
    """Read through its public properties only (encode_spans reads the SDK's own more directly)."""


@st.composite
def readable_spans(draw: st.DrawFn) -> ReadableSpan:
    events = [
        Event(
            draw(st.text(max_size=8)),
            draw(ATTRIBUTES.flatmap(bounded)),
            timestamp=draw(st.integers(0, 2**64 - 1)),
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    links = [
        Link(draw(span_contexts()), draw(ATTRIBUTES.flatmap(bounded)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    code = draw(st.sampled_from(StatusCode))
    description = draw(st.text(max_size=10)) if code is StatusCode.ERROR else None
    cls = draw(st.sampled_from([ReadableSpan, SubclassedSpan]))
    return cls(
        name=draw(st.text(max_size=20)),
        context=draw(span_contexts()),
        parent=draw(st.none() | span_contexts()),
        resource=draw(st.sampled_from(RESOURCES)),
        attributes=draw(ATTRIBUTES.flatmap(bounded)),
        events=draw(st.sampled_from([events, BoundedList.from_seq(1, events)])),
        links=draw(st.sampled_from([links, BoundedList.from_seq(1, links)])),
        kind=draw(st.sampled_from(SpanKind)),
        status=Status(code, description),
        start_time=draw(st.none() | st.integers(0, 2**64 - 1)),
        end_time=draw(st.none() | st.integers(0, 2**64 - 1)),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readable_spans(), max_size=6))
def test_random_spans_encode_as_in_the_sdk(spans: list[ReadableSpan]) -> None:
    assert_encoded_like_the_sdk(spans)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    attributes=ATTRIBUTES,
    event_attributes=ATTRIBUTES,
    link_attributes=ATTRIBUTES,
    remote=st.booleans(),
    description=st.none() | st.text(max_size=10),
)
def test_random_attributes_through_a_tracer_encode_as_in_the_sdk(
    attributes: dict[str, Any],
    event_attributes: dict[str, Any],
    link_attributes: dict[str, Any],
    remote: bool,
    description: str | None,
) -> None:
    recorded = Recorded(limits=SpanLimits(max_span_attributes=4, max_event_attributes=4))
    tracer = recorded.provider.get_tracer("t")
    parent = set_span_in_context(NonRecordingSpan(context(remote=remote)))
    links = [Link(context(remote=not remote), link_attributes)]
    logging.disable(logging.WARNING)  # the SDK warns of every empty key it drops
    try:
        with tracer.start_as_current_span("s", context=parent, links=links) as span:
            span.set_attributes(attributes)
            span.add_event("e", event_attributes)
            if description is not None:
                span.set_status(Status(StatusCode.ERROR, description))
    finally:
        logging.disable(logging.NOTSET)
    assert_encoded_like_the_sdk(recorded.spans)


# -- the exporter setup_telemetry builds -----------------------------------------------------------


class RecordingReceiver(OtlpReceiver):
    """The test receiver, also keeping every request body as it arrived (inflated)."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    async def _traces(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return await super()._traces(request)


def test_build_exporter_makes_the_fast_exporter() -> None:
    settings = TelemetrySettings.from_env(
        {"APP_ID": "svc-test", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}
    )
    exporter = build_exporter(settings)
    assert isinstance(exporter, FastOTLPSpanExporter)
    exporter.shutdown()


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_setup_telemetry_sends_what_encode_spans_makes(
    compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[bytes] = []

    def recording_encode(spans: Sequence[ReadableSpan]) -> bytes:
        made.append(encode_spans(spans))
        return made[-1]

    monkeypatch.setattr(otlp_exporter, "encode_spans", recording_encode)
    receiver = RecordingReceiver()
    async with receiver:
        telemetry = setup_telemetry(
            TelemetrySettings.from_env(
                {
                    "APP_ID": "svc-test",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                    "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
                }
            ),
            set_global=False,
        )
        # setup_telemetry wraps the exporter (bounded shutdown, export health)
        assert isinstance(getattr(telemetry.exporter, "inner", None), FastOTLPSpanExporter)
        provider = telemetry.tracer_provider
        assert isinstance(provider, TracerProvider)
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = telemetry.tracer("orchestrator")
        remote = extract_context({"traceparent": TRACEPARENT})
        with tracer.start_as_current_span(
            "process tasks", context=remote, kind=SpanKind.CONSUMER, attributes=EVERY_VALUE
        ) as span:
            span.add_event("retry", {"attempt": 2})
            span.set_status(Status(StatusCode.ERROR, "boom"))
            with tracer.start_as_current_span(
                "llm call", kind=SpanKind.CLIENT, links=[Link(context(), {"n": 1})]
            ):
                pass
        await telemetry.aclose()
        spans = await receiver.wait_for(lambda s: len(s) == 2, timeout=10)
    assert receiver.bodies == made
    assert len(made) == 1
    assert ExportTraceServiceRequest.FromString(made[0]) == sdk_encode_spans(
        memory.get_finished_spans()
    )
    outer, inner = sorted(spans, key=lambda s: s.name, reverse=True)
    assert (outer.name, outer.kind, outer.status, outer.status_message) == (
        "process tasks",
        "CONSUMER",
        "ERROR",
        "boom",
    )
    assert outer.parent_span_id == "b7ad6b7169203331"
    assert outer.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert outer.service_name == "svc-test"
    assert outer.scope == "orchestrator"
    assert outer.events == ("retry",)
    assert outer.attributes["messaging.system"] == "redis"
    assert outer.attributes["int64.min"] == INT64_MIN
    assert outer.attributes["mixed"] == ["a", 1, None, 2.5, b"b", True]
    assert outer.attributes["mapping"] == {"k": "v", "n": {"deep": [1, 2]}, "none": None}
    assert math.isnan(outer.attributes["nan"])
    assert (inner.name, inner.kind, inner.parent_span_id) == ("llm call", "CLIENT", outer.span_id)
    assert [(link.span_id, link.attributes) for link in inner.links] == [
        ("b7ad6b7169203331", {"n": 1})
    ]


async def test_a_batch_our_encoder_refuses_still_reaches_the_collector() -> None:
    spans = [
        ReadableSpan("plain", context(), resource=Resource({}), attributes={"k": "v"}),
        ReadableSpan("odd", context(), resource=Resource({}), attributes={"big": 2**64}),
    ]
    receiver = RecordingReceiver()
    async with receiver:
        exporter = FastOTLPSpanExporter(endpoint=receiver.traces_url)
        try:
            result = await asyncio.to_thread(exporter.export, spans)
        finally:
            exporter.shutdown()
        assert result.name == "SUCCESS"
    assert receiver.bodies == [sdk_encode_spans(spans).SerializePartialToString()]
    assert [(s.name, s.attributes) for s in receiver.spans] == [("plain", {"k": "v"}), ("odd", {})]
