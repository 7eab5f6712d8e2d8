"""The results consumer: worker result events reach the task store, once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from orchestrator_api.model import TaskStatus
from orchestrator_api.results import ResultsConsumer
from orchestrator_api.store import MemoryTaskStore, RedisTaskStore, TaskStore
from orchestrator_broker import ConsumeOptions, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_tasks.messages import ResultEvent, converter
from tests.api.test_store import delta, new_record, started, succeeded
from tests.support.redis_server import RedisServer

HANG = 30.0
FAST = ConsumeOptions(block=0.05, lease=5.0)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = HANG) -> None:
    """Poll ``check`` until it holds (a hang guard, never a speed assertion)."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def publish(broker: MemoryBroker, *events: ResultEvent) -> None:
    for result_event in events:
        await broker.publish("results", Message(payload=converter.unstructure(result_event)))


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    made = MemoryBroker()
    yield made
    await made.close()


@pytest.fixture
async def running() -> AsyncIterator[Callable[[ResultsConsumer], None]]:
    """Start consumers in the background; each is stopped and awaited at teardown."""
    started_consumers: list[tuple[ResultsConsumer, asyncio.Task[None]]] = []

    def start(consumer: ResultsConsumer) -> None:
        started_consumers.append((consumer, asyncio.create_task(consumer.run())))

    yield start
    for consumer, task in started_consumers:
        await consumer.stop()
        async with asyncio.timeout(HANG):
            await task


async def status_of(store: TaskStore, tenant: str, task_id: str) -> TaskStatus | None:
    record = await store.get(tenant, task_id)
    return record.status if record is not None else None


async def test_events_on_the_stream_bring_the_task_to_success(
    broker: MemoryBroker, running: Callable[[ResultsConsumer], None]
) -> None:
    store = MemoryTaskStore(60)
    record = new_record()
    await store.create(record)
    await publish(
        broker,
        started(record),
        delta(record, 1, "Hel"),
        delta(record, 2, "lo"),
        succeeded(record, 3, "Hello"),
    )
    consumer = ResultsConsumer(broker, store, consumer="api-1", options=FAST)
    running(consumer)

    await eventually(lambda: _is(store, record.id, TaskStatus.SUCCEEDED))
    events = await store.events("acme", record.id)
    assert [e.event for e in events] == ["status", "status", "delta", "delta", "result"]
    assert consumer.stats.applied == 4
    await eventually(lambda: _settled(broker))


async def test_many_tasks_keep_their_own_order(
    broker: MemoryBroker, running: Callable[[ResultsConsumer], None]
) -> None:
    store = MemoryTaskStore(60)
    records = [new_record() for _ in range(100)]
    for record in records:
        await store.create(record)
    running(ResultsConsumer(broker, store, consumer="api-1", options=FAST, max_in_flight=50))

    # interleaved as many workers would publish them
    for seq in range(6):
        for record in records:
            if seq == 0:
                await publish(broker, started(record))
            elif seq < 5:
                await publish(broker, delta(record, seq, str(seq)))
            else:
                await publish(broker, succeeded(record, seq, "1234"))

    for record in records:
        await eventually(lambda r=record: _is(store, r.id, TaskStatus.SUCCEEDED))  # type: ignore[misc]
        texts = [
            e.data["text"] for e in await store.events("acme", record.id) if e.event == "delta"
        ]
        assert texts == ["1", "2", "3", "4"]


async def test_a_redelivered_event_is_applied_once(
    broker: MemoryBroker, running: Callable[[ResultsConsumer], None]
) -> None:
    store = MemoryTaskStore(60)
    record = new_record()
    await store.create(record)
    consumer = ResultsConsumer(broker, store, consumer="api-1", options=FAST)
    running(consumer)

    await publish(broker, started(record), delta(record, 1, "a"), delta(record, 1, "a"))
    await publish(broker, succeeded(record, 2, "a"))

    await eventually(lambda: _is(store, record.id, TaskStatus.SUCCEEDED))
    assert [e.event for e in await store.events("acme", record.id)].count("delta") == 1
    assert consumer.stats.ignored == 1


async def test_a_payload_that_is_not_a_result_event_is_dead_lettered(
    broker: MemoryBroker, running: Callable[[ResultsConsumer], None]
) -> None:
    store = MemoryTaskStore(60)
    consumer = ResultsConsumer(broker, store, consumer="api-1", options=FAST)
    running(consumer)

    await broker.publish("results", Message(payload={"task_id": "t", "kind": "exploded"}))

    await eventually(lambda: _has_dead_letter(broker))
    (dead,) = await broker.dead_letters("results")
    assert "not a ResultEvent" in dead.reason
    assert consumer.stats.dead_lettered == 1


async def test_stop_ends_run(broker: MemoryBroker) -> None:
    consumer = ResultsConsumer(broker, MemoryTaskStore(60), consumer="api-1", options=FAST)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.05)

    await consumer.stop()

    async with asyncio.timeout(HANG):
        await task


class GatedStore(MemoryTaskStore):
    """Records which applies began, and holds each until its gate opens."""

    def __init__(self) -> None:
        super().__init__(60)
        self.began: list[tuple[str, int, int]] = []
        self.gates: dict[tuple[int, int], asyncio.Event] = {}

    async def apply(self, event: ResultEvent) -> bool:
        self.began.append((event.kind.value, event.attempt, event.seq))
        gate = self.gates.setdefault((event.attempt, event.seq), asyncio.Event())
        await gate.wait()
        return await super().apply(event)

    def open(self, attempt: int, seq: int) -> None:
        self.gates.setdefault((attempt, seq), asyncio.Event()).set()


async def test_a_lane_applies_an_attempts_deltas_without_waiting_but_not_its_end(
    broker: MemoryBroker, running: Callable[[ResultsConsumer], None]
) -> None:
    store = GatedStore()
    record = new_record()
    await store.create(record)
    running(ResultsConsumer(broker, store, consumer="api-1", options=FAST))
    await publish(broker, started(record), delta(record, 1, "a"), delta(record, 2, "b"))
    # All three are being applied at once: none waited for the one before.
    await eventually(lambda: _true(len(store.began) == 3))

    await publish(broker, succeeded(record, 3, "ab"), started(record, attempt=2))
    await asyncio.sleep(0.2)
    assert len(store.began) == 3  # the terminal event waits for the three before it
    store.open(1, 2)
    store.open(1, 1)
    await asyncio.sleep(0.1)
    assert len(store.began) == 3  # ... all of them
    store.open(1, 0)
    await eventually(lambda: _true(len(store.began) == 4))
    assert store.began[3] == ("succeeded", 1, 3)
    await asyncio.sleep(0.1)
    assert len(store.began) == 4  # and nothing runs beside it, not even another attempt
    store.open(1, 3)
    await eventually(lambda: _true(len(store.began) == 5))
    store.open(2, 0)

    await eventually(lambda: _settled(broker))
    events = await store.events("acme", record.id)
    assert [(e.event, e.data.get("text")) for e in events][:5] == [
        ("status", None),
        ("status", None),
        ("delta", "a"),
        ("delta", "b"),
        ("result", "ab"),
    ]


async def test_an_attempts_events_wait_for_the_earlier_attempts_to_be_applied(
    broker: MemoryBroker, running: Callable[[ResultsConsumer], None]
) -> None:
    store = GatedStore()
    record = new_record()
    await store.create(record)
    running(ResultsConsumer(broker, store, consumer="api-1", options=FAST))
    await publish(broker, started(record), delta(record, 1, "a"), started(record, attempt=2))
    await eventually(lambda: _true(len(store.began) == 2))
    await asyncio.sleep(0.2)
    assert len(store.began) == 2
    store.open(1, 0)
    store.open(1, 1)
    await eventually(lambda: _true(len(store.began) == 3))
    assert store.began[2] == ("started", 2, 0)
    store.open(2, 0)
    await eventually(lambda: _settled(broker))


@pytest.mark.redis
async def test_events_wait_out_a_store_outage_and_none_is_lost(
    broker: MemoryBroker,
    running: Callable[[ResultsConsumer], None],
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(appendonly=True)
    store = RedisTaskStore.from_url(server.url, ttl_seconds=60)
    try:
        record = new_record()
        await store.create(record)
        server.kill()
        await publish(broker, started(record), delta(record, 1, "a"), succeeded(record, 2, "a"))
        consumer = ResultsConsumer(broker, store, consumer="api-1", options=FAST)
        running(consumer)

        await eventually(lambda: _true(consumer.stats.store_retries >= 3))
        assert await broker.pending_count("results", "api") > 0
        server.start()

        await eventually(lambda: _is(store, record.id, TaskStatus.SUCCEEDED))
        assert [e.event for e in await store.events("acme", record.id)] == [
            "status",
            "status",
            "delta",
            "result",
        ]
        await eventually(lambda: _settled(broker))
        assert await broker.dead_letters("results") == []
    finally:
        await store.close()


@pytest.mark.redis
async def test_stopping_during_a_store_outage_hands_the_events_back(
    broker: MemoryBroker, redis_server_factory: Callable[..., RedisServer]
) -> None:
    server = redis_server_factory()
    store = RedisTaskStore.from_url(server.url, ttl_seconds=60)
    try:
        server.kill()
        record = new_record()
        await publish(broker, started(record))
        consumer = ResultsConsumer(broker, store, consumer="api-1", options=FAST)
        task = asyncio.create_task(consumer.run())
        await eventually(lambda: _true(consumer.stats.store_retries >= 1))

        await consumer.stop()
        async with asyncio.timeout(HANG):
            await task

        assert await broker.pending_count("results", "api") == 0
        assert await broker.backlog("results", "api") == 1
    finally:
        await store.close()


async def _is(store: TaskStore, task_id: str, status: TaskStatus) -> bool:
    return await status_of(store, "acme", task_id) is status


async def _settled(broker: MemoryBroker) -> bool:
    return (
        await broker.pending_count("results", "api") == 0
        and await broker.backlog("results", "api") == 0
    )


async def _has_dead_letter(broker: MemoryBroker) -> bool:
    return bool(await broker.dead_letters("results"))


async def _true(value: bool) -> bool:
    return value
