"""The API's processing of a result is part of the task's trace."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_api.model import TaskStatus
from orchestrator_api.results import ResultsConsumer
from orchestrator_api.store import MemoryTaskStore
from orchestrator_broker import ConsumeOptions, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_tasks.messages import converter
from orchestrator_telemetry import TracingBroker
from tests.api.test_store import new_record, succeeded

HANG = 30.0


async def test_the_process_span_of_a_result_joins_the_workers_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = TracingBroker(MemoryBroker(), tracer_provider=provider)
    store = MemoryTaskStore(60)
    record = new_record()
    await store.create(record)
    with provider.get_tracer("worker").start_as_current_span("worker attempt") as parent:
        await broker.publish("results", Message(converter.unstructure(succeeded(record, 0))))
    consumer = ResultsConsumer(broker, store, consumer="api-1", options=ConsumeOptions(block=0.05))
    running = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(HANG):
            while True:
                got = await store.get("acme", record.id)
                if got is not None and got.status is TaskStatus.SUCCEEDED:
                    break
                await asyncio.sleep(0.02)
            while True:
                if any(s.name == "process results" for s in exporter.get_finished_spans()):
                    break
                await asyncio.sleep(0.02)
    finally:
        await consumer.stop()
        await running
        await broker.close()

    (process,) = [s for s in exporter.get_finished_spans() if s.name == "process results"]
    assert process.context is not None
    assert process.context.trace_id == parent.get_span_context().trace_id
    assert process.kind is trace.SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["orchestrator.task.id"] == record.id
    assert process.attributes["orchestrator.result.applied"] is True
