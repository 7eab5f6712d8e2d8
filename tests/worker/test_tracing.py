"""Traces: the result events of a task belong to the trace of the request that submitted it."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_broker import MemoryBroker, Message
from orchestrator_tasks import TaskMessage, messages_of
from orchestrator_tasks.messages import converter
from orchestrator_telemetry import TracingBroker, process_context
from orchestrator_worker import Worker
from orchestrator_worker.providers import EchoProvider, ProviderRegistry
from tests.worker.support import RESULTS, TASKS, settings, wait_for


async def test_result_events_carry_the_submitters_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    memory = MemoryBroker()
    traced = TracingBroker(memory, tracer_provider=provider)
    await memory.ensure_group(RESULTS, "test")
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /v1/tasks") as request_span:
        task = TaskMessage(
            task_id="t-1",
            tenant="a",
            messages=messages_of("traced"),
            parameters={"latency_ms": 300},
        )
        await traced.publish(TASKS, Message(payload=converter.unstructure(task)))
    trace_id = trace.format_trace_id(request_span.get_span_context().trace_id)

    worker = Worker(
        traced,
        settings(),
        providers=ProviderRegistry([EchoProvider(tracer_provider=provider)]),
        delivery_context=process_context,
        started_after=0.05,
    )
    running = asyncio.create_task(worker.run())
    results = memory.consume(RESULTS, "test", "reader")
    headers = [(await anext(results)).message.headers for _ in range(2)]
    await results.aclose()
    await wait_for(lambda: any(s.name == f"process {TASKS}" for s in exporter.get_finished_spans()))
    worker.stop()
    await running
    await memory.close()

    for carried in headers:
        assert carried["traceparent"].split("-")[1] == trace_id
    finished = exporter.get_finished_spans()
    process = next(span for span in finished if span.name == f"process {TASKS}")
    assert process.context.trace_id == request_span.get_span_context().trace_id
    assert process.attributes is not None
    assert process.attributes["orchestrator.delivery.settlement"] == "ack"
    sends = [span for span in finished if span.name == f"send {RESULTS}"]
    assert len(sends) == 2
    assert all(span.parent is not None for span in sends)
    assert {span.parent.span_id for span in sends if span.parent} == {process.context.span_id}
    (call,) = [span for span in finished if span.name == "chat echo"]
    assert call.kind is trace.SpanKind.CLIENT
    assert call.parent is not None
    assert call.parent.span_id == process.context.span_id
    assert call.attributes is not None
    assert call.attributes["gen_ai.provider.name"] == "echo"
    assert call.attributes["gen_ai.usage.output_tokens"] == 1
