"""Retries in traces: each attempt is its own ``process`` span with its own provider CLIENT
span, and the retry decision (delay, reason) is an event on the span of the failed attempt."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_broker import MemoryBroker
from orchestrator_telemetry import TracingBroker, process_context
from orchestrator_worker import Worker
from orchestrator_worker.pricing import Price
from orchestrator_worker.providers import (
    HttpSettings,
    OpenAIProvider,
    OpenAISettings,
    ProviderRegistry,
)
from tests.support.fake_llm import FakeLLM, Reply
from tests.worker.support import RESULTS, TASKS, collect, settings, submit, wait_for


def attribute(span: ReadableSpan, suffix: str) -> object:
    assert span.attributes is not None
    return next(value for key, value in span.attributes.items() if key.endswith(suffix))


async def test_each_attempt_is_a_span_with_its_call_and_the_retry_decision(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = spans
    memory = MemoryBroker()
    traced = TracingBroker(memory, tracer_provider=tracer_provider)
    await memory.ensure_group(RESULTS, "test")
    async with FakeLLM() as fake:
        fake.script(
            Reply.error(429, headers={"Retry-After": "0.1"}),
            Reply.answer("second", " time", usage=(10, 20)),
        )
        openai = OpenAIProvider(
            OpenAISettings(base_url=fake.openai_base_url, http=HttpSettings(read_timeout=2.0)),
            tracer_provider=tracer_provider,
        )
        worker = Worker(
            traced,
            settings(
                retry_base=0.01,
                retry_max=0.05,
                model_prices={"openai/gpt-4o-mini": Price(1.0, 2.0)},
            ),
            providers=ProviderRegistry([openai]),
            delivery_context=process_context,
        )
        running = asyncio.create_task(worker.run())
        try:
            task = await submit(memory, model="openai/gpt-4o-mini")
            events = (await collect(memory, 1))[task.task_id]

            def processed() -> int:
                finished = exporter.get_finished_spans()
                return sum(1 for span in finished if span.name == f"process {TASKS}")

            await wait_for(lambda: processed() == 2)
        finally:
            worker.stop()
            await running
            await openai.close()
            await memory.close()

    assert events[-1].cost_usd == pytest.approx((10 * 1.0 + 20 * 2.0) / 1e6)
    finished = exporter.get_finished_spans()
    first, second = sorted(
        (span for span in finished if span.name == f"process {TASKS}"),
        key=lambda span: span.start_time or 0,
    )
    assert [attribute(first, "delivery_count"), attribute(second, "delivery_count")] == [1, 2]
    calls = [span for span in finished if span.name == "chat gpt-4o-mini"]
    assert len(calls) == 2
    assert all(call.kind is trace.SpanKind.CLIENT for call in calls)
    assert {call.parent.span_id for call in calls if call.parent} == {
        first.context.span_id,
        second.context.span_id,
    }
    failed_call = next(c for c in calls if c.parent and c.parent.span_id == first.context.span_id)
    assert failed_call.attributes is not None
    assert failed_call.attributes["error.type"] == "rate_limit"
    # The decision, on the failed attempt's span: the delay honours Retry-After.
    (retry,) = [event for event in first.events if event.name == "orchestrator.retry"]
    assert retry.attributes is not None
    assert retry.attributes["orchestrator.retry.reason"] == "rate_limit"
    assert retry.attributes["orchestrator.retry.retry_after"] == pytest.approx(0.1)
    delay = retry.attributes["orchestrator.retry.delay"]
    assert isinstance(delay, float)
    assert delay >= 0.1
    assert attribute(first, "settlement") == "nack"
    assert attribute(second, "settlement") == "ack"
    assert attribute(second, "cost_usd") == pytest.approx(events[-1].cost_usd)
