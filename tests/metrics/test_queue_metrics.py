"""Queue gauges: read from the broker at scrape time, cached, shared by concurrent scrapes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from orchestrator_broker import MemoryBroker, Message
from orchestrator_telemetry.metrics import MetricError, refresh
from orchestrator_telemetry.queue_metrics import QueueMetrics
from tests.metrics.exposition import names, parse, value


class CountingBroker(MemoryBroker):
    """A MemoryBroker that counts the calls the gauges make, and can be made slow."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.delay = 0.0

    async def backlog(self, stream: str, group: str) -> int:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return await super().backlog(stream, group)

    async def pending_count(self, stream: str, group: str) -> int:
        self.calls += 1
        return await super().pending_count(stream, group)


async def read(registry: CollectorRegistry) -> dict[str, Any]:
    await refresh(registry)
    return parse(generate_latest(registry).decode())


async def test_backlog_pending_and_dead_letters_are_read_from_the_broker() -> None:
    broker = CountingBroker()
    registry = CollectorRegistry()
    QueueMetrics(registry, broker, [("tasks", "workers")], dead_letter_streams=["tasks"])
    await broker.ensure_group("tasks", "workers")
    for index in range(3):
        await broker.publish("tasks", Message(payload={"n": index}))
    consumer = broker.consume("tasks", "workers", "c1")
    delivery = await anext(consumer)
    await delivery.dead_letter("test")

    families = await read(registry)
    await consumer.aclose()
    await broker.close()

    # Of three tasks one is dead-lettered; the consumer may have fetched the others already.
    backlog = value(families, "orchestrator_queue_backlog", stream="tasks", group="workers")
    pending = value(families, "orchestrator_queue_pending", stream="tasks", group="workers")
    assert backlog + pending == 2
    assert value(families, "orchestrator_queue_dead_letters", stream="tasks") == 1
    assert value(families, "orchestrator_broker_up") == 1


async def test_a_fair_streams_waiting_room_is_read_by_priority_and_top_tenants() -> None:
    broker = CountingBroker()
    registry = CollectorRegistry()
    queues = QueueMetrics(registry, broker, [], top_tenants=2)
    queues.watch("tasks", "workers", fair=True)
    await broker.ensure_group("tasks", "workers")
    for tenant, n, priority in (("a", 4, "low"), ("b", 2, "high"), ("c", 1, "normal")):
        for index in range(n):
            await broker.publish("tasks", Message(index), key=tenant, priority=priority)  # type: ignore[arg-type]

    families = await read(registry)
    await broker.close()

    waiting = {p: value(families, "orchestrator_queue_waiting", stream="tasks", priority=p)
               for p in ("high", "normal", "low")}  # fmt: skip
    assert waiting == {"high": 2, "normal": 1, "low": 4}
    tenants = {
        t: value(families, "orchestrator_queue_tenant_waiting", stream="tasks", tenant=t)
        for t in ("a", "b", "other")
    }
    assert tenants == {"a": 4, "b": 2, "other": 1}  # two tenants named, the rest summed
    assert len(families["orchestrator_queue_tenant_waiting"].samples) == 3


async def test_an_unfair_stream_reports_no_waiting_room() -> None:
    registry = CollectorRegistry()
    broker = CountingBroker()
    QueueMetrics(registry, broker, [("results", "api")])
    families = await read(registry)
    await broker.close()
    assert "orchestrator_queue_waiting" not in families
    assert "orchestrator_queue_tenant_waiting" not in families


async def test_reads_are_cached_for_the_ttl() -> None:
    broker = CountingBroker()
    registry = CollectorRegistry()
    QueueMetrics(registry, broker, [("tasks", "workers")], ttl=60.0)

    for _ in range(5):
        await read(registry)
    await broker.close()

    assert broker.calls == 2  # one backlog and one pending read for five scrapes


async def test_concurrent_scrapes_share_one_read() -> None:
    broker = CountingBroker()
    broker.delay = 0.2
    registry = CollectorRegistry()
    QueueMetrics(registry, broker, [("tasks", "workers")], ttl=0.0)

    results = await asyncio.gather(*(read(registry) for _ in range(5)))
    await broker.close()

    assert broker.calls == 2
    assert all(value(r, "orchestrator_broker_up") == 1 for r in results)


async def test_a_broker_that_does_not_answer_in_time_reads_as_down() -> None:
    broker = CountingBroker()
    broker.delay = 30.0
    registry = CollectorRegistry()
    QueueMetrics(registry, broker, [("tasks", "workers")], timeout=0.05)

    async with asyncio.timeout(10):  # hang guard: the gauges give up after ~0.1 s
        families = await read(registry)
    await broker.close()

    assert value(families, "orchestrator_broker_up") == 0
    assert "orchestrator_queue_backlog" not in names(families)


async def test_api_and_worker_on_one_registry_share_the_queue_gauges() -> None:
    broker = CountingBroker()
    registry = CollectorRegistry()
    first = QueueMetrics.on(registry, broker)
    first.watch("tasks", "workers")
    second = QueueMetrics.on(registry, broker)
    second.watch("results", "api", dead_letters=True)
    second.watch("tasks", "workers")

    families = await read(registry)
    await broker.close()

    assert first is second
    backlog = {
        (s.labels["stream"], s.labels["group"])
        for s in families["orchestrator_queue_backlog"].samples
    }
    assert backlog == {("tasks", "workers"), ("results", "api")}
    assert {s.labels["stream"] for s in families["orchestrator_queue_dead_letters"].samples} == {
        "results"
    }


async def test_before_the_first_read_the_broker_reads_as_down() -> None:
    registry = CollectorRegistry()
    QueueMetrics(registry, MemoryBroker(), [("tasks", "workers")])

    families = parse(generate_latest(registry).decode())

    assert value(families, "orchestrator_broker_up") == 0
    assert "orchestrator_queue_backlog" not in names(families)


def test_a_registry_holds_one_set_of_queue_gauges() -> None:
    registry = CollectorRegistry()
    QueueMetrics(registry, MemoryBroker(), [])
    with pytest.raises(MetricError):
        QueueMetrics(registry, MemoryBroker(), [])
