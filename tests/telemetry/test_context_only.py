"""Tracing off: span contexts (ids, W3C flags) exactly as the SDK makes them, nothing recorded.

The API answers with ``traceparent`` and stores the task's ``trace_id``, and the worker
continues that trace, whether or not anything is exported; these tests hold the id-only path
to what a sampling SDK provider would put on the wire.
"""

from __future__ import annotations

import asyncio

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.span import TraceState

from orchestrator_broker import ConsumeOptions, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_telemetry import (
    ContextOnlyTracerProvider,
    TracedDelivery,
    TracingBroker,
    current_trace_id,
    extract_context,
    instrument_app,
    is_context_only,
    process_context,
)
from orchestrator_telemetry.setup import build_sampler

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
SAMPLERS = [
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
]


def parent_context(flags: int, state: TraceState | None = None) -> Context:
    remote = SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(flags), state)
    return trace.set_span_in_context(NonRecordingSpan(remote))


def flags_of(span: trace.Span) -> int:
    return int(span.get_span_context().trace_flags)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("parent_flags", [None, 0x00, 0x01, 0x02, 0x03])
def test_flags_are_what_the_sdk_sampler_would_give(sampler: str, parent_flags: int | None) -> None:
    ratio = 0.5 if sampler.endswith("traceidratio") else None
    sdk = TracerProvider(sampler=build_sampler(sampler, ratio)).get_tracer("t")
    ours = ContextOnlyTracerProvider(sampler, ratio).get_tracer("t")
    if parent_flags is not None:
        context = parent_context(parent_flags)
        assert flags_of(ours.start_span("x", context)) == flags_of(sdk.start_span("x", context))
        return
    # Roots: a ratio sampler decides by trace id, so compare over many of them.
    decisions = set()
    for _ in range(64):
        span = ours.start_span("x")
        trace_id = span.get_span_context().trace_id
        decision = build_sampler(sampler, ratio).should_sample(None, trace_id, "x").decision
        sampled = decision is Decision.RECORD_AND_SAMPLE
        assert bool(flags_of(span) & 0x01) is sampled
        assert flags_of(span) & 0x02  # random trace ids, as the SDK says of its own
        decisions.add(sampled)
    if sampler.endswith("traceidratio"):
        assert decisions == {True, False}


def test_spans_record_nothing_but_have_fresh_ids_in_the_parents_trace() -> None:
    tracer = ContextOnlyTracerProvider().get_tracer("t")
    assert is_context_only(tracer)
    state = TraceState([("vendor", "value")])
    span = tracer.start_span("child", parent_context(0x01, state), attributes={"a": 1})
    context = span.get_span_context()
    assert not span.is_recording()
    assert (context.trace_id, context.trace_state) == (TRACE_ID, state)
    assert context.span_id not in (0, SPAN_ID)
    assert not context.is_remote
    roots = {tracer.start_span("root").get_span_context().trace_id for _ in range(100)}
    assert len(roots) == 100
    assert not is_context_only(TracerProvider().get_tracer("t"))


def test_start_as_current_span_makes_the_span_current_and_restores_the_previous() -> None:
    tracer = ContextOnlyTracerProvider().get_tracer("t")
    assert current_trace_id() is None
    with tracer.start_as_current_span("outer") as outer:
        outer_trace = current_trace_id()
        assert outer_trace == trace.format_trace_id(outer.get_span_context().trace_id)
        with tracer.start_as_current_span("inner") as inner:
            assert inner.get_span_context().trace_id == outer.get_span_context().trace_id
        assert current_trace_id() == outer_trace
    assert current_trace_id() is None


# -- the server middleware ---------------------------------------------------------------


async def whoami(request: web.Request) -> web.Response:
    return web.json_response(
        {"trace_id": current_trace_id(), "baggage": dict(baggage.get_all() or {})}
    )


@pytest.fixture
async def client() -> TestClient[web.Request, web.Application]:
    app = web.Application()
    app.router.add_get("/tasks/{task_id}", whoami)
    app.router.add_get("/healthz", whoami)
    instrument_app(app, ContextOnlyTracerProvider(), exclude_paths=["/healthz"])
    return TestClient(TestServer(app))


async def test_each_request_gets_its_own_trace(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client:
        first = await (await client.get("/tasks/a")).json()
        second = await (await client.get("/tasks/a")).json()
    assert first["trace_id"] is not None
    assert second["trace_id"] not in (None, first["trace_id"])


async def test_an_incoming_trace_and_its_baggage_are_continued(
    client: TestClient[web.Request, web.Application],
) -> None:
    headers = {
        "traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01",
        "baggage": "tenant=acme",
    }
    async with client:
        body = await (await client.get("/tasks/a", headers=headers)).json()
    assert body == {"trace_id": f"{TRACE_ID:032x}", "baggage": {"tenant": "acme"}}


async def test_a_malformed_traceparent_starts_a_new_trace(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client:
        body = await (await client.get("/tasks/a", headers={"traceparent": "00-zz"})).json()
    assert body["trace_id"] not in (None, f"{TRACE_ID:032x}")


async def test_excluded_paths_get_no_trace(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client:
        body = await (await client.get("/healthz")).json()
    assert body["trace_id"] is None


# -- the broker --------------------------------------------------------------------------


@pytest.fixture
async def broker() -> TracingBroker:
    traced = TracingBroker(MemoryBroker(), tracer_provider=ContextOnlyTracerProvider())
    await traced.ensure_group("tasks", "workers")
    return traced


async def receive(broker: TracingBroker) -> TracedDelivery:
    deliveries = broker.consume("tasks", "workers", "w1", ConsumeOptions(block=0.05, lease=5))
    try:
        return await asyncio.wait_for(anext(deliveries), timeout=10)
    finally:
        await deliveries.aclose()


async def next_delivery(broker: TracingBroker) -> Message:
    delivery = await receive(broker)
    await delivery.ack()
    return delivery.message


@pytest.mark.parametrize("flags", [0x00, 0x01])
async def test_publish_carries_the_current_trace_with_its_sampled_flag(
    broker: TracingBroker, flags: int
) -> None:
    token = attach(parent_context(flags))
    try:
        await broker.publish("tasks", Message(payload=1, id="m1", headers={"x": "y"}))
    finally:
        detach(token)
    message = await next_delivery(broker)
    version, trace_id, span_id, sent_flags = message.headers["traceparent"].split("-")
    assert (version, trace_id, sent_flags) == ("00", f"{TRACE_ID:032x}", f"{flags:02x}")
    assert span_id != f"{SPAN_ID:016x}"  # the (unrecorded) send span's own id
    assert (message.id, message.payload, message.headers["x"]) == ("m1", 1, "y")


async def test_a_worker_continues_the_trace_of_the_task(broker: TracingBroker) -> None:
    token = attach(parent_context(0x01))
    try:
        await broker.publish("tasks", Message(payload=1))
    finally:
        detach(token)
    delivery = await receive(broker)
    assert not delivery.span.is_recording()
    with process_context(delivery):
        assert current_trace_id() == f"{TRACE_ID:032x}"
        await broker.publish("tasks", Message(payload="result"))
    await delivery.ack()
    result = await next_delivery(broker)
    parent = trace.get_current_span(extract_context(result.headers)).get_span_context()
    assert parent.trace_id == TRACE_ID
    assert parent.trace_flags.sampled
    await broker.close()


async def test_publish_outside_any_trace_starts_one(broker: TracingBroker) -> None:
    await broker.publish("tasks", Message(payload=1))
    message = await next_delivery(broker)
    assert message.headers["traceparent"].startswith("00-")
    assert message.headers["traceparent"].endswith("-03")  # random id, sampled (default)


def test_replace_headers_names_every_message_field() -> None:
    # Message.replace_headers builds the copy field by field (no attrs.evolve): a new field
    # must be added there too.
    assert [f.name for f in attrs.fields(Message)] == ["payload", "id", "headers", "created_at"]
