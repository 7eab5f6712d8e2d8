"""The exporting provider's fast path: spans the sampler drops skip the SDK, exactly.

``SamplingTracerProvider`` must give every span the context, flags, ``tracestate`` and
recording-ness the SDK ``TracerProvider`` gives it with the same sampler and the same ids,
sample roots at the configured ratio, and export sampled spans as the SDK does.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.span import TraceState

from orchestrator_broker import ConsumeOptions, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_telemetry import TelemetrySettings, TracingBroker, setup_telemetry
from orchestrator_telemetry.sampling import SamplingTracer, SamplingTracerProvider, build_sampler

SAMPLERS = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
RATIO = 0.25
BOUND = TraceIdRatioBased.get_bound_for_rate(RATIO)
PARENT_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_SPAN = 0xB7AD6B7169203331
SPAN_ID = 0x00F067AA0BA902B7
STATE = TraceState([("vendor", "value"), ("other", "x")])

#: Trace ids around the 0.25 bound (which reads only the low 64 bits).
TRACE_IDS = [
    1,
    BOUND - 1,
    BOUND,
    BOUND + 1,
    (0xFFFF << 64) | (BOUND - 1),
    (0xFFFF << 64) | BOUND,
    (1 << 128) - 1,
]


def ratio_for(sampler: str) -> float | None:
    return RATIO if sampler.endswith("traceidratio") else None


class FixedIds(IdGenerator):
    """The SDK's id generator, made to hand out chosen ids."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id = trace_id
        self.span_id = span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id

    def is_trace_id_random(self) -> bool:
        return True


def sdk_tracer(sampler: str, trace_id: int) -> trace.Tracer:
    provider = TracerProvider(
        sampler=build_sampler(sampler, ratio_for(sampler)),
        id_generator=FixedIds(trace_id, SPAN_ID),
        shutdown_on_exit=False,
    )
    return provider.get_tracer("t")


def fast_tracer(
    sampler: str, trace_id: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[SamplingTracer, list[int]]:
    """Our tracer, drawing ``trace_id`` and ``SPAN_ID``; also the trace ids it drew."""
    provider = SamplingTracerProvider(sampler, ratio_for(sampler), shutdown_on_exit=False)
    ids = provider.id_generator
    drawn: list[int] = []

    def draw() -> int:
        drawn.append(trace_id)
        return trace_id

    monkeypatch.setattr(ids, "draw_trace_id", draw)
    monkeypatch.setattr(ids, "generate_span_id", lambda: SPAN_ID)
    tracer = provider.get_tracer("t")
    assert isinstance(tracer, SamplingTracer)
    return tracer, drawn


def parent(flags: int, *, remote: bool, state: TraceState | None = None) -> Context:
    span_context = SpanContext(PARENT_TRACE, PARENT_SPAN, remote, TraceFlags(flags), state)
    return trace.set_span_in_context(NonRecordingSpan(span_context))


PARENTS = {
    "root": None,
    "invalid parent": trace.set_span_in_context(trace.INVALID_SPAN),
    "local sampled": parent(0x01, remote=False),
    "local unsampled": parent(0x00, remote=False),
    "local sampled random": parent(0x03, remote=False),
    "local unsampled random": parent(0x02, remote=False, state=STATE),
    "remote sampled": parent(0x01, remote=True, state=STATE),
    "remote unsampled": parent(0x00, remote=True, state=STATE),
    "remote sampled random": parent(0x03, remote=True, state=STATE),
    "remote unsampled random": parent(0x02, remote=True, state=STATE),
}


def same_span(ours: trace.Span, sdk: trace.Span) -> None:
    assert ours.get_span_context() == sdk.get_span_context()
    assert ours.get_span_context().trace_flags == sdk.get_span_context().trace_flags
    assert dict(ours.get_span_context().trace_state) == dict(sdk.get_span_context().trace_state)
    assert ours.is_recording() is sdk.is_recording()
    assert type(ours) is type(sdk)
    ours.end()
    sdk.end()


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("parent_name", list(PARENTS))
@pytest.mark.parametrize("trace_id", TRACE_IDS, ids=hex)
def test_spans_are_the_sdks_for_every_sampler_and_parent(
    sampler: str, parent_name: str, trace_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = PARENTS[parent_name]
    ours, _ = fast_tracer(sampler, trace_id, monkeypatch)
    sdk = sdk_tracer(sampler, trace_id)
    same_span(ours.start_span("x", context), sdk.start_span("x", context))
    # The same with the parent current rather than passed.
    token = attach(context if context is not None else Context())
    try:
        same_span(ours.start_span("x"), sdk.start_span("x"))
    finally:
        detach(token)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("parent_name", list(PARENTS))
def test_start_as_current_span_gives_the_sdks_span(
    sampler: str, parent_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = PARENTS[parent_name]
    for trace_id in (1, BOUND):
        ours, _ = fast_tracer(sampler, trace_id, monkeypatch)
        sdk = sdk_tracer(sampler, trace_id)
        with ours.start_as_current_span("x", context) as mine:
            assert trace.get_current_span() is mine
        with sdk.start_as_current_span("x", context) as theirs:
            pass
        assert trace.get_current_span() is trace.INVALID_SPAN
        same_span(mine, theirs)


@pytest.mark.parametrize("sampler", ["traceidratio", "parentbased_traceidratio"])
def test_a_root_is_decided_on_the_trace_id_it_gets(
    sampler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for trace_id in TRACE_IDS:
        tracer, drawn = fast_tracer(sampler, trace_id, monkeypatch)
        span = tracer.start_span("root")
        assert drawn == [trace_id]  # one draw, whether or not the SDK takes over
        assert span.get_span_context().trace_id == trace_id
        assert span.is_recording() is (trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < BOUND)


@pytest.mark.parametrize("sampler", ["traceidratio", "parentbased_traceidratio"])
def test_the_ratio_of_roots_sampled_is_the_configured_one(sampler: str) -> None:
    provider = SamplingTracerProvider(sampler, RATIO, shutdown_on_exit=False)
    tracer = provider.get_tracer("t")
    total = 20_000
    sampled = 0
    for _ in range(total):
        span = tracer.start_span("root")
        flags = span.get_span_context().trace_flags
        assert span.is_recording() is flags.sampled
        sampled += span.is_recording()
        span.end()
    # 25% of 20,000 is 5,000 (standard deviation ~61); the square of the ratio would be 1,250.
    assert 4_500 < sampled < 5_500


@pytest.fixture
def exported() -> tuple[SamplingTracerProvider, InMemorySpanExporter]:
    provider = SamplingTracerProvider("parentbased_traceidratio", 0.5, shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_sampled_spans_are_exported_with_their_attributes_and_drawn_trace_id(
    exported: tuple[SamplingTracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider, exporter = exported
    ids = provider.id_generator
    assert isinstance(ids, type(provider.id_generator))
    drawn: list[int] = []
    draw = ids.draw_trace_id

    def recording_draw() -> int:
        drawn.append(draw())
        return drawn[-1]

    monkeypatch.setattr(ids, "draw_trace_id", recording_draw)
    tracer = provider.get_tracer("t")
    recorded: dict[int, str] = {}
    for index in range(200):
        with tracer.start_as_current_span("root", attributes={"n": index}) as root:
            child = tracer.start_span("child", attributes={"n": index})
            child.set_attribute("later", "yes")
            child.end()
            if root.is_recording():
                recorded[root.get_span_context().trace_id] = str(index)
    assert 0 < len(recorded) < 200
    spans = exporter.get_finished_spans()
    assert len(spans) == 2 * len(recorded)  # each sampled root and its child; nothing else
    assert {span.context.trace_id for span in spans if span.context is not None} == set(recorded)
    assert set(recorded) <= set(drawn)
    for span in spans:
        assert span.context is not None
        assert span.attributes is not None
        assert str(span.attributes["n"]) == recorded[span.context.trace_id]
        if span.name == "child":
            assert span.attributes["later"] == "yes"
            assert span.parent is not None
            assert span.parent.trace_id == span.context.trace_id


def test_a_handed_over_trace_id_is_never_used_by_another_thread() -> None:
    provider = SamplingTracerProvider(shutdown_on_exit=False)
    ids = provider.id_generator
    ids.hand_over(42)  # type: ignore[attr-defined]
    elsewhere: list[int] = []
    thread = threading.Thread(target=lambda: elsewhere.append(ids.generate_trace_id()))
    thread.start()
    thread.join()
    assert elsewhere[0] != 42
    assert ids.generate_trace_id() == 42
    assert ids.generate_trace_id() != 42  # once only


def test_an_unsampled_span_is_made_current_in_the_current_context_as_the_sdk_does() -> None:
    tracer = SamplingTracerProvider("always_off", shutdown_on_exit=False).get_tracer("t")
    with_baggage = baggage.set_baggage("tenant", "acme")
    with tracer.start_as_current_span("x", context=with_baggage) as span:
        assert not span.is_recording()
        assert trace.get_current_span() is span
        assert baggage.get_baggage("tenant") is None  # the SDK ignores the rest of `context`
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_an_exception_leaves_an_unsampled_span_and_restores_the_context() -> None:
    tracer = SamplingTracerProvider("always_off", shutdown_on_exit=False).get_tracer("t")
    with pytest.raises(ValueError, match="boom"), tracer.start_as_current_span("x"):
        raise ValueError("boom")
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_sampled_span_records_an_escaping_exception_as_the_sdk_does(
    exported: tuple[SamplingTracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    tracer = provider.get_tracer("t")
    remote = PARENTS["remote sampled"]
    with pytest.raises(ValueError, match="boom"), tracer.start_as_current_span("x", remote):
        raise ValueError("boom")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


async def test_start_as_current_span_decorates_each_call_with_its_own_span(
    exported: tuple[SamplingTracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    tracer = provider.get_tracer("t")
    seen: list[trace.Span] = []

    @tracer.start_as_current_span("sync", context=PARENTS["remote sampled"])
    def sync() -> None:
        seen.append(trace.get_current_span())

    @tracer.start_as_current_span("async", context=PARENTS["remote sampled"])
    async def coro() -> None:
        await asyncio.sleep(0)
        seen.append(trace.get_current_span())

    sync()
    sync()
    await coro()
    assert len({span.get_span_context().span_id for span in seen}) == 3
    assert sorted(span.name for span in exporter.get_finished_spans()) == [
        "async",
        "sync",
        "sync",
    ]


def test_with_the_sdks_span_metrics_on_every_span_goes_through_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    tracer = SamplingTracerProvider("always_off", shutdown_on_exit=False).get_tracer("t")
    assert isinstance(tracer, SamplingTracer)
    assert tracer._rule is None
    assert not tracer.start_span("x").is_recording()


def test_setup_telemetry_exports_through_a_sampling_sdk_provider() -> None:
    settings = TelemetrySettings.from_env(
        {"APP_ID": "svc-test", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    )
    telemetry = setup_telemetry(settings, set_global=False, exporter=InMemorySpanExporter())
    assert isinstance(telemetry.tracer_provider, SamplingTracerProvider)
    assert isinstance(telemetry.tracer_provider, TracerProvider)
    assert isinstance(telemetry.tracer("test"), SamplingTracer)
    telemetry.shutdown()


async def test_broker_spans_that_record_keep_their_attributes_and_link(
    exported: tuple[SamplingTracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    broker = TracingBroker(MemoryBroker(), tracer_provider=provider)
    await broker.ensure_group("tasks", "workers")
    token = attach(PARENTS["remote sampled"])
    try:
        await broker.publish("tasks", Message(payload=1, id="m1"))
    finally:
        detach(token)
    deliveries = broker.consume("tasks", "workers", "w1", ConsumeOptions(block=0.05, lease=5))
    try:
        delivery = await asyncio.wait_for(anext(deliveries), timeout=10)
    finally:
        await deliveries.aclose()
    await delivery.ack()
    spans: dict[str, ReadableSpan] = {s.name: s for s in exporter.get_finished_spans()}
    send, process = spans["send tasks"], spans["process tasks"]
    assert send.attributes is not None
    assert process.attributes is not None
    assert send.attributes["messaging.message.id"] == "m1"
    assert "messaging.redis.message.entry_id" in send.attributes
    assert process.attributes["messaging.consumer.group.name"] == "workers"
    assert process.attributes["messaging.client.id"] == "w1"
    assert send.context is not None
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    await broker.close()
