"""TracingBroker: one trace from publish through the broker to the worker's results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import attach, detach
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator_broker import (
    AlreadySettled,
    Broker,
    BrokerUnavailable,
    ConsumeOptions,
    Delivery,
    Message,
)
from orchestrator_broker.memory import MemoryBroker
from orchestrator_telemetry import TracedDelivery, TracingBroker, process_context
from orchestrator_telemetry.tracing_broker import (
    DEAD_LETTER_REASON,
    NACK_DELAY,
    SETTLEMENT,
    delivery_count_attribute,
    entry_id_attribute,
)
from tests.telemetry.conftest import SpanRecorder

STREAM, GROUP, CONSUMER = "tasks", "workers", "worker-1"
OPTIONS = ConsumeOptions(block=0.05, lease=5.0)


@pytest.fixture
async def broker(recorder: SpanRecorder) -> AsyncIterator[TracingBroker]:
    traced = TracingBroker(MemoryBroker(), system="redis", tracer_provider=recorder.provider)
    await traced.ensure_group(STREAM, GROUP)
    yield traced
    await traced.close()


async def receive(broker: TracingBroker, stream: str = STREAM) -> TracedDelivery:
    """The next delivery for the test consumer (hang-guarded)."""
    deliveries = broker.consume(stream, GROUP, CONSUMER, OPTIONS)
    try:
        return await asyncio.wait_for(anext(deliveries), timeout=10)
    finally:
        await deliveries.aclose()


def test_tracing_broker_satisfies_the_broker_protocol(broker: TracingBroker) -> None:
    assert isinstance(broker, Broker)
    typed: Broker = broker  # and statically (mypy)
    assert typed is broker


async def test_traced_delivery_satisfies_the_delivery_protocol(broker: TracingBroker) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)
    assert isinstance(delivery, Delivery)
    await delivery.ack()


async def test_publish_makes_a_producer_span_and_injects_its_context(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    message = Message(payload={"prompt": "hi"})
    entry_id = await broker.publish(STREAM, message)
    send = recorder.one(f"send {STREAM}")
    assert send.kind is SpanKind.PRODUCER
    assert send.attributes == {
        "messaging.system": "redis",
        "messaging.destination.name": STREAM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": message.id,
        entry_id_attribute("redis"): entry_id,
    }
    delivery = await receive(broker)
    assert send.context is not None
    expected = (
        f"00-{trace.format_trace_id(send.context.trace_id)}-"
        f"{trace.format_span_id(send.context.span_id)}-"
    )
    assert delivery.message.headers["traceparent"].startswith(expected)
    await delivery.ack()


async def test_publish_joins_the_current_trace(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    with recorder.provider.get_tracer("test").start_as_current_span("POST /tasks") as request:
        await broker.publish(STREAM, Message(payload=1))
    send = recorder.one(f"send {STREAM}")
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id


async def test_process_span_is_child_of_send_and_linked_to_it(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    message = Message(payload=1)
    entry_id = await broker.publish(STREAM, message)
    delivery = await receive(broker)
    await delivery.ack()
    send, process = recorder.one(f"send {STREAM}"), recorder.one(f"process {STREAM}")
    assert send.context is not None
    assert process.context is not None
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert process.attributes is not None
    assert dict(process.attributes) == {
        "messaging.system": "redis",
        "messaging.destination.name": STREAM,
        "messaging.consumer.group.name": GROUP,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": message.id,
        "messaging.client.id": CONSUMER,
        delivery_count_attribute("redis"): 1,
        entry_id_attribute("redis"): entry_id,
        SETTLEMENT: "ack",
    }
    assert process.status.status_code is StatusCode.UNSET


async def test_process_span_stays_open_until_the_delivery_is_settled(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)
    assert delivery.span.is_recording()
    assert recorder.named(f"process {STREAM}") == []
    await delivery.ack()
    assert not delivery.span.is_recording()
    assert len(recorder.named(f"process {STREAM}")) == 1


async def test_a_message_without_trace_headers_starts_a_new_trace(
    recorder: SpanRecorder,
) -> None:
    inner = MemoryBroker()
    await inner.ensure_group(STREAM, GROUP)
    await inner.publish(STREAM, Message(payload=1))  # published by an untraced producer
    broker = TracingBroker(inner, tracer_provider=recorder.provider)
    delivery = await receive(broker)
    await delivery.ack()
    process = recorder.one(f"process {STREAM}")
    assert process.parent is None
    assert process.links == ()
    await broker.close()


async def test_work_inside_activate_is_a_child_of_process(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)
    tracer = recorder.provider.get_tracer("worker")
    with delivery.activate() as span:
        assert trace.get_current_span() is span
        with tracer.start_as_current_span("provider call"):
            await asyncio.sleep(0)
        await broker.publish("results", Message(payload={"text": "hello"}))
    assert trace.get_current_span() is not span  # detached again
    await delivery.ack()
    process = recorder.one(f"process {STREAM}")
    assert process.context is not None
    for name in ("provider call", "send results"):
        child = recorder.one(name)
        assert child.parent is not None, name
        assert child.parent.span_id == process.context.span_id, name
        assert child.context is not None
        assert child.context.trace_id == process.context.trace_id, name


async def test_tasks_started_inside_activate_inherit_the_span(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)

    async def side_work() -> trace.Span:
        return trace.get_current_span()

    with delivery.activate() as span:
        task = asyncio.create_task(side_work())
    assert await task is span
    await delivery.ack()


async def test_results_published_inside_activate_reach_the_next_consumer_in_the_same_trace(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.ensure_group("results", GROUP)
    await broker.publish(STREAM, Message(payload=1))
    task = await receive(broker)
    with task.activate():
        await broker.publish("results", Message(payload="done"))
    await task.ack()
    result = await receive(broker, "results")
    await result.ack()
    trace_ids = {span.context.trace_id for span in recorder.spans if span.context is not None}
    assert len(trace_ids) == 1
    assert len(recorder.spans) == 4  # send tasks, process tasks, send results, process results


async def test_exception_in_activate_is_recorded_and_reraised(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)
    with pytest.raises(RuntimeError, match="provider exploded"), delivery.activate():
        raise RuntimeError("provider exploded")
    await delivery.nack(delay=2.5)
    process = recorder.one(f"process {STREAM}")
    assert process.status.status_code is StatusCode.ERROR
    assert "provider exploded" in (process.status.description or "")
    assert [event.name for event in process.events] == ["exception"]
    assert process.attributes is not None
    assert process.attributes[SETTLEMENT] == "nack"
    assert process.attributes[NACK_DELAY] == 2.5


async def test_defer_is_a_settlement_of_its_own(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)
    assert delivery.delivery_count == 1
    await delivery.defer(0.0)
    process = recorder.one(f"process {STREAM}")
    assert process.status.status_code is StatusCode.UNSET
    assert process.attributes is not None
    assert process.attributes[SETTLEMENT] == "defer"
    assert process.attributes[NACK_DELAY] == 0.0
    again = await receive(broker)
    assert again.delivery_count == 1
    await again.ack()


async def test_cancellation_in_activate_is_an_event_not_an_error(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)

    async def work() -> None:
        with delivery.activate():
            await asyncio.sleep(60)

    task = asyncio.create_task(work())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await delivery.nack()
    process = recorder.one(f"process {STREAM}")
    assert process.status.status_code is StatusCode.UNSET
    assert [event.name for event in process.events] == ["cancelled"]


async def test_nack_ends_the_span_and_redelivery_gets_its_own_span_with_the_count(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    first = await receive(broker)
    await first.nack()
    second = await receive(broker)
    assert second.delivery_count == 2
    await second.ack()
    first_span, second_span = recorder.named(f"process {STREAM}")
    assert first_span.attributes is not None
    assert second_span.attributes is not None
    assert first_span.attributes[SETTLEMENT] == "nack"
    assert first_span.attributes[NACK_DELAY] == 0.0
    assert second_span.attributes[delivery_count_attribute("redis")] == 2
    assert first_span.parent == second_span.parent  # both children of the one send


async def test_dead_letter_sets_error_status_with_the_reason(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)
    await delivery.dead_letter("invalid prompt")
    process = recorder.one(f"process {STREAM}")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "dead-lettered: invalid prompt"
    assert process.attributes is not None
    assert process.attributes[SETTLEMENT] == "dead_letter"
    assert process.attributes[DEAD_LETTER_REASON] == "invalid prompt"
    (dead,) = await broker.dead_letters(STREAM)
    assert dead.reason == "invalid prompt"


async def test_settling_twice_raises_and_leaves_the_first_outcome(
    broker: TracingBroker, recorder: SpanRecorder
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)
    await delivery.ack()
    with pytest.raises(AlreadySettled):
        await delivery.ack()
    process = recorder.one(f"process {STREAM}")
    assert process.attributes is not None
    assert process.attributes[SETTLEMENT] == "ack"
    assert process.status.status_code is StatusCode.UNSET


async def test_close_ends_spans_of_unsettled_deliveries(recorder: SpanRecorder) -> None:
    broker = TracingBroker(MemoryBroker(), tracer_provider=recorder.provider)
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message(payload=1))
    await receive(broker)
    await broker.close()
    process = recorder.one(f"process {STREAM}")
    assert process.attributes is not None
    assert process.attributes[SETTLEMENT] == "abandoned"


async def test_baggage_crosses_the_broker(broker: TracingBroker) -> None:
    token = attach(baggage.set_baggage("tenant", "acme"))
    try:
        await broker.publish(STREAM, Message(payload=1))
    finally:
        detach(token)
    delivery = await receive(broker)
    with delivery.activate():
        assert baggage.get_baggage("tenant") == "acme"
    await delivery.ack()


async def test_process_context_activates_traced_and_ignores_plain_deliveries(
    broker: TracingBroker,
) -> None:
    await broker.publish(STREAM, Message(payload=1))
    delivery: Delivery = await receive(broker)
    with process_context(delivery):
        assert trace.get_current_span() is delivery.span  # type: ignore[attr-defined]
    assert isinstance(delivery, TracedDelivery)
    with process_context(delivery.inner):
        assert trace.get_current_span() is trace.INVALID_SPAN
    await delivery.ack()


async def test_reclaimed_deliveries_are_traced(recorder: SpanRecorder) -> None:
    inner = MemoryBroker()
    broker = TracingBroker(inner, tracer_provider=recorder.provider)
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message(payload=1))
    deliveries = inner.consume(STREAM, GROUP, "dead-worker", ConsumeOptions(auto_extend=False))
    await asyncio.wait_for(anext(deliveries), timeout=10)
    await deliveries.aclose()
    (claimed,) = await broker.reclaim(STREAM, GROUP, CONSUMER, min_idle=0.0)
    assert isinstance(claimed, TracedDelivery)
    assert claimed.delivery_count == 2
    await claimed.ack()
    process = recorder.one(f"process {STREAM}")
    assert process.attributes is not None
    assert process.attributes[delivery_count_attribute("redis")] == 2
    assert process.parent is not None
    await broker.close()


async def test_pass_through_queries(broker: TracingBroker) -> None:
    await broker.publish(STREAM, Message(payload=1))
    assert await broker.backlog(STREAM, GROUP) == 1
    delivery = await receive(broker)
    assert await broker.pending_count(STREAM, GROUP) == 1
    await delivery.ack()
    assert await broker.pending_count(STREAM, GROUP) == 0
    await broker.ping()
    assert isinstance(broker.inner, MemoryBroker)


async def test_a_failed_publish_marks_the_send_span_as_error(recorder: SpanRecorder) -> None:
    broker = TracingBroker(MemoryBroker(), tracer_provider=recorder.provider)
    await broker.close()
    with pytest.raises(BrokerUnavailable):
        await broker.publish(STREAM, Message(payload=1))
    send = recorder.one(f"send {STREAM}")
    assert send.status.status_code is StatusCode.ERROR
    assert [event.name for event in send.events] == ["exception"]


async def test_a_failed_ack_ends_the_span_as_error(recorder: SpanRecorder) -> None:
    inner = MemoryBroker()
    broker = TracingBroker(inner, tracer_provider=recorder.provider)
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message(payload=1))
    delivery = await receive(broker)
    await inner.close()  # the broker goes away under the worker
    with pytest.raises(BrokerUnavailable):
        await delivery.ack()
    process = recorder.one(f"process {STREAM}")
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes[SETTLEMENT] == "ack failed"
    await broker.close()
