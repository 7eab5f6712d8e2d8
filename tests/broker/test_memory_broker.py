"""What the in-memory broker does beyond the shared contract (``test_contract.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from orchestrator_broker import (
    Broker,
    BrokerUnavailable,
    ConsumeOptions,
    Delivery,
    MemoryBroker,
    Message,
)
from tests.broker.test_contract import HANG, take

STREAM, GROUP = "tasks", "workers"
QUICK = ConsumeOptions(block=0.1, lease=0.3, auto_extend=False)


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    memory = MemoryBroker()
    yield memory
    await memory.close()


async def test_satisfies_the_protocols(broker: MemoryBroker) -> None:
    assert isinstance(broker, Broker)
    await broker.publish(STREAM, Message(1))
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        assert isinstance(delivery, Delivery)
        await delivery.ack()


async def test_ids_stay_monotonic_within_one_millisecond(broker: MemoryBroker) -> None:
    ids = [await broker.publish(STREAM, Message(i)) for i in range(500)]
    assert all(re.fullmatch(r"\d+-\d+", i) for i in ids)
    keys = [tuple(map(int, i.split("-"))) for i in ids]
    assert keys == sorted(set(keys))


async def test_consume_creates_a_missing_group_from_the_beginning(broker: MemoryBroker) -> None:
    message = Message("early")
    await broker.publish(STREAM, message)
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        assert delivery.message == message
        await delivery.ack()


async def test_a_waiting_consumer_wakes_on_publish_not_on_its_block_timeout(
    broker: MemoryBroker,
) -> None:
    patient = ConsumeOptions(block=600.0, lease=600.0)
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c1", patient)) as consumer:
        waiting = asyncio.ensure_future(anext(consumer))
        await asyncio.sleep(0.05)
        await broker.publish(STREAM, Message("wake up"))
        delivery = await asyncio.wait_for(waiting, HANG)
        await delivery.ack()


async def test_read_order_is_own_pending_delayed_reclaimed_then_new(
    broker: MemoryBroker,
) -> None:
    for name in ("own", "delayed", "orphan", "new"):
        await broker.publish(STREAM, Message(name))
    options = ConsumeOptions(batch_size=1, block=0.1, lease=0.2, auto_extend=False)
    first_life = broker.consume(STREAM, GROUP, "worker", options)
    _, delayed = await take(first_life, 2)
    await first_life.aclose()
    no_reclaim = ConsumeOptions(batch_size=1, block=0.1, lease=30.0, auto_extend=False)
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "dead", no_reclaim)) as dead:
        await take(dead, 1)  # the orphan, never settled
    await delayed.nack(0.0)
    await asyncio.sleep(0.3)  # the orphan's lease runs out
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "worker", options)) as again:
        deliveries = await take(again, 4)
        assert [d.message.payload for d in deliveries] == ["own", "delayed", "orphan", "new"]
        assert [d.delivery_count for d in deliveries] == [2, 2, 2, 1]
        for delivery in deliveries:
            await delivery.ack()
    assert await broker.pending_count(STREAM, GROUP) == 0


async def test_prior_deliveries_of_a_raw_entry_count(broker: MemoryBroker) -> None:
    fields: dict[str, bytes | str] = {"id": "m1", "payload": b'"again"', "prior_deliveries": "2"}
    await broker.publish_raw(STREAM, fields)
    await broker.publish_raw(STREAM, {**fields, "id": "m2", "prior_deliveries": "5"})
    await broker.publish_raw(STREAM, {**fields, "id": "m3", "prior_deliveries": "0"})
    options = ConsumeOptions(block=0.1, lease=30.0, max_deliveries=5)
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c1", options)) as consumer:
        deliveries = await take(consumer, 2)
        assert [(d.message.id, d.delivery_count) for d in deliveries] == [("m1", 3), ("m3", 1)]
        for delivery in deliveries:
            await delivery.ack()
    (dead,) = await broker.dead_letters(STREAM)
    assert dead.message is not None
    assert (dead.message.id, dead.delivery_count) == ("m2", 5)


async def test_reclaim_takes_idle_entries_from_anyone_the_claimant_included(
    broker: MemoryBroker,
) -> None:
    # As XAUTOCLAIM does; only a consume() iterator's own reclaim pass skips its deliveries.
    await publish_two(broker)
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c1", QUICK)) as consumer:
        first, second = await take(consumer, 2)
        await asyncio.sleep(0.35)
        claimed = await broker.reclaim(STREAM, GROUP, "c1", min_idle=0.3, count=1)
        assert [(d.entry_id, d.delivery_count) for d in claimed] == [(first.entry_id, 2)]
        (other,) = await broker.reclaim(STREAM, GROUP, "c2", min_idle=0.3)
        assert other.entry_id == second.entry_id
        for delivery in (*claimed, other):
            await delivery.ack()


async def test_a_second_iterator_with_the_same_name_reclaims_the_firsts_stalled_deliveries(
    broker: MemoryBroker,
) -> None:
    await broker.publish(STREAM, Message(1))
    first = broker.consume(STREAM, GROUP, "c1", QUICK)
    second = broker.consume(STREAM, GROUP, "c1", QUICK)
    try:
        (held,) = await take(first, 1)
        (again,) = await take(second, 1)
        assert (again.entry_id, again.delivery_count) == (held.entry_id, 2)
        await again.ack()
    finally:
        await first.aclose()
        await second.aclose()


async def publish_two(broker: MemoryBroker) -> None:
    await broker.publish(STREAM, Message(1))
    await broker.publish(STREAM, Message(2))


async def test_auto_extension_stops_when_the_iterator_closes(broker: MemoryBroker) -> None:
    await broker.publish(STREAM, Message(1))
    live = ConsumeOptions(block=0.1, lease=0.3, auto_extend=True)
    consumer = broker.consume(STREAM, GROUP, "c1", live)
    (delivery,) = await take(consumer, 1)
    await asyncio.sleep(0.4)
    assert await broker.reclaim(STREAM, GROUP, "c2", min_idle=0.3) == []  # still renewed
    await consumer.aclose()
    await asyncio.sleep(0.35)
    (claimed,) = await broker.reclaim(STREAM, GROUP, "c2", min_idle=0.3)
    assert claimed.delivery_count == 2
    await claimed.ack()
    await delivery.ack()  # XACK semantics: harmless now


async def test_cancelling_a_waiting_consumer_leaves_nothing_pending(
    broker: MemoryBroker,
) -> None:
    consumer = broker.consume(STREAM, GROUP, "c1", QUICK)
    waiting = asyncio.ensure_future(anext(consumer))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await broker.publish(STREAM, Message(1))
    assert await broker.pending_count(STREAM, GROUP) == 0
    assert await broker.backlog(STREAM, GROUP) == 1


async def test_negative_nack_delay_is_refused(broker: MemoryBroker) -> None:
    await broker.publish(STREAM, Message(1))
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        with pytest.raises(ValueError, match="negative"):
            await delivery.nack(-1.0)
        assert not delivery.settled
        await delivery.ack()


async def test_unknown_streams_and_groups_are_empty(broker: MemoryBroker) -> None:
    assert await broker.pending_count("nope", GROUP) == 0
    assert await broker.backlog("nope", GROUP) == 0
    assert await broker.dead_letters("nope") == []


async def test_a_closed_broker_refuses_work(broker: MemoryBroker) -> None:
    await broker.publish(STREAM, Message(1))
    consumer = broker.consume(STREAM, GROUP, "c1", QUICK)
    (delivery,) = await take(consumer, 1)
    await broker.close()
    with pytest.raises(StopAsyncIteration):
        await anext(consumer)
    calls: list[Callable[[], Awaitable[object]]] = [
        broker.ping,
        lambda: broker.publish(STREAM, Message(2)),
        lambda: broker.ensure_group(STREAM, GROUP),
        delivery.ack,
    ]
    for call in calls:
        with pytest.raises(BrokerUnavailable):
            await call()
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c2", QUICK)) as late:
        with pytest.raises(StopAsyncIteration):
            await anext(late)


async def test_dead_letter_records_keep_the_original_fields(broker: MemoryBroker) -> None:
    message = Message({"p": 1}, headers={"traceparent": "t"})
    await broker.publish(STREAM, message)
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        await delivery.dead_letter("nope")
    (dead,) = await broker.dead_letters(STREAM)
    assert dead.raw_fields["traceparent"] == "t"
    assert set(dead.raw_fields) == {"id", "created_at", "payload", "traceparent"}
    # The dead stream is a stream like any other: a replay tool can consume it.
    async with contextlib.aclosing(
        broker.consume(f"{STREAM}:dead", "replay", "tool", QUICK)
    ) as replay:
        (record,) = await take(replay, 1)
        assert (record.message.id, record.message.payload) == (message.id, message.payload)
        assert record.message.headers["dead_reason"] == "nope"
        await record.ack()


async def test_entries_every_group_has_read_are_dropped(broker: MemoryBroker) -> None:
    await broker.ensure_group(STREAM, GROUP)
    for i in range(5000):
        await broker.publish(STREAM, Message(i))
    options = ConsumeOptions(block=0.1, lease=30.0)
    async with contextlib.aclosing(broker.consume(STREAM, GROUP, "c1", options)) as consumer:
        deliveries = await take(consumer, 5000)
        await asyncio.gather(*(d.ack() for d in deliveries))
    assert [d.message.payload for d in deliveries] == list(range(5000))
    retained = len(broker._streams[STREAM].log)  # a peek inside: nothing public shows it
    assert retained < 2500
    # A group created now starts at the oldest entry still kept, as after XTRIM on Redis.
    await broker.ensure_group(STREAM, "late")
    assert await broker.backlog(STREAM, "late") == retained
    assert await broker.backlog(STREAM, GROUP) == 0
