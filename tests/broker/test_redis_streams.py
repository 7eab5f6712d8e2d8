"""The Redis Streams adapter's own behaviour (the shared contract lives in test_contract.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator_broker import (
    SUBSCRIBED,
    AlreadySettled,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    ConsumeOptions,
    Delivery,
    LeaseLost,
    Message,
    _redis_consumer,
)
from orchestrator_broker._redis_scripts import DELETED_REASON
from orchestrator_broker.redis_streams import RedisStreamsBroker, delayed_key

pytestmark = pytest.mark.redis

HANG = 20.0  # hang guard, never asserted as a bound

STREAM, GROUP = "tasks", "workers"
FAST = ConsumeOptions(block=0.2, lease=30.0)

BrokerFactory = Callable[..., RedisStreamsBroker]


@pytest.fixture
async def make_broker(redis_url: str) -> AsyncIterator[BrokerFactory]:
    """Brokers on the session server, closed at teardown."""
    made: list[RedisStreamsBroker] = []

    def make(**kwargs: Any) -> RedisStreamsBroker:
        broker = RedisStreamsBroker.from_url(redis_url, **kwargs)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def take(
    broker: RedisStreamsBroker,
    n: int,
    consumer: str = "c1",
    options: ConsumeOptions = FAST,
    stream: str = STREAM,
) -> list[Delivery]:
    """The first ``n`` deliveries for ``consumer`` (the iterator is then closed)."""
    out: list[Delivery] = []
    gen = broker.consume(stream, GROUP, consumer, options)
    try:
        async with asyncio.timeout(20):
            async for delivery in gen:
                out.append(delivery)
                if len(out) == n:
                    break
    finally:
        await gen.aclose()
    return out


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polling Redis, no event to wait on
            await asyncio.sleep(0.05)


async def test_a_message_round_trips_with_headers_as_plain_fields(
    make_broker: BrokerFactory, raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    sent = Message({"prompt": "hi"}, headers={"traceparent": "00-abc-def-01"})
    entry_id = await broker.publish(STREAM, sent)

    [delivery] = await take(broker, 1)

    assert delivery.entry_id == entry_id
    assert delivery.message == sent
    assert delivery.delivery_count == 1
    fields: Any = (await raw.xrange(STREAM))[0][1]  # type: ignore[index]
    assert fields[b"traceparent"] == b"00-abc-def-01"
    await delivery.ack()
    assert delivery.settled
    assert await broker.pending_count(STREAM, GROUP) == 0
    with pytest.raises(AlreadySettled):
        await delivery.ack()


async def test_a_restarted_consumer_drains_its_own_pending_entries_first(
    make_broker: BrokerFactory,
) -> None:
    first = make_broker()
    await first.ensure_group(STREAM, GROUP)
    old = [await first.publish(STREAM, Message(i)) for i in range(2)]
    await take(first, 2)  # yielded, never settled: they stay in c1's PEL
    await first.close()
    new = await first_new_publish(make_broker)

    again = make_broker()
    got = await take(again, 3)

    assert [d.entry_id for d in got] == [*old, new]
    assert [d.delivery_count for d in got] == [2, 2, 1]


async def first_new_publish(make_broker: BrokerFactory) -> str:
    broker = make_broker()
    return await broker.publish(STREAM, Message("new"))


async def test_nack_with_delay_parks_the_entry_then_redelivers_it_counted(
    make_broker: BrokerFactory, raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message("retry me"))
    gen = broker.consume(STREAM, GROUP, "c1", FAST)
    async with asyncio.timeout(20):
        first = await anext(gen)
        loop = asyncio.get_running_loop()
        nacked_at = loop.time()
        await first.nack(delay=0.8)
        assert await raw.zcard(delayed_key(STREAM)) == 1
        assert await raw.xlen(STREAM) == 0  # single group: the original is deleted
        assert await broker.backlog(STREAM, GROUP) == 1
        assert await broker.pending_count(STREAM, GROUP) == 0
        second = await anext(gen)
        waited = loop.time() - nacked_at
    await gen.aclose()

    assert waited >= 0.7  # the delay is honoured (ms clock granularity aside)
    assert second.message == first.message
    assert second.delivery_count == 2
    assert second.entry_id != first.entry_id
    assert await raw.zcard(delayed_key(STREAM)) == 0


async def test_nack_without_delay_redelivers_at_once(make_broker: BrokerFactory) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message("again"))
    gen = broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=5.0))
    async with asyncio.timeout(20):
        first = await anext(gen)
        await first.nack()
        second = await anext(gen)
        await second.nack()
        third = await anext(gen)
    await gen.aclose()
    assert [first.delivery_count, second.delivery_count, third.delivery_count] == [1, 2, 3]
    assert third.message == first.message


async def test_dead_letter_moves_the_entry_with_its_reason(make_broker: BrokerFactory) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    sent = Message({"x": 1}, headers={"traceparent": "tp"})
    entry_id = await broker.publish(STREAM, sent)
    [delivery] = await take(broker, 1)

    await delivery.dead_letter("provider rejected the prompt")

    [dead] = await broker.dead_letters(STREAM)
    assert dead.reason == "provider rejected the prompt"
    assert dead.original_entry_id == entry_id
    assert dead.group == GROUP
    assert dead.delivery_count == 1
    assert dead.message == sent
    assert await broker.pending_count(STREAM, GROUP) == 0
    with pytest.raises(AlreadySettled):
        await delivery.nack()


async def test_a_corrupt_entry_is_dead_lettered_not_yielded(
    make_broker: BrokerFactory, raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    foreign = str((await raw.xadd(STREAM, {"hello": "world"})).decode())  # type: ignore[union-attr]
    good = await broker.publish(STREAM, Message("fine"))

    [delivery] = await take(broker, 1)

    assert delivery.entry_id == good
    [dead] = await broker.dead_letters(STREAM)
    assert dead.original_entry_id == foreign
    assert "undecodable" in dead.reason
    assert "payload" in dead.reason
    assert dead.message is None
    assert dead.raw_fields["hello"] == "world"


async def test_past_max_deliveries_the_entry_is_dead_lettered(make_broker: BrokerFactory) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message("poison"))
    options = ConsumeOptions(block=0.2, max_deliveries=2)
    gen = broker.consume(STREAM, GROUP, "c1", options)
    async with asyncio.timeout(20):
        await (await anext(gen)).nack()
        await (await anext(gen)).nack()
        await broker.publish(STREAM, Message("after"))
        after = await anext(gen)
    await gen.aclose()
    assert after.message.payload == "after"
    [dead] = await broker.dead_letters(STREAM)
    assert dead.delivery_count == 2
    assert "max_deliveries" in dead.reason
    assert dead.message is not None
    assert dead.message.payload == "poison"


async def _has_dead(broker: RedisStreamsBroker) -> bool:
    return bool(await broker.dead_letters(STREAM))


async def test_reclaim_takes_over_idle_deliveries_with_a_higher_count(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message("work"))
    [lost] = await take(broker, 1, "dead-worker", ConsumeOptions(block=0.2, auto_extend=False))
    await asyncio.sleep(0.05)

    [taken] = await broker.reclaim(STREAM, GROUP, "c2", min_idle=0.01)

    assert taken.entry_id == lost.entry_id
    assert taken.delivery_count == 2
    with pytest.raises(LeaseLost):
        await lost.extend_lease()
    await taken.extend_lease()  # still ours
    await taken.ack()


async def test_extend_lease_resets_idle_time_without_counting_a_delivery(
    make_broker: BrokerFactory, raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message("long job"))
    [delivery] = await take(broker, 1, options=ConsumeOptions(block=0.2, auto_extend=False))
    await asyncio.sleep(0.3)

    await delivery.extend_lease()

    rows: Any = await raw.xpending_range(STREAM, GROUP, "-", "+", 10)
    [row] = rows
    assert row["time_since_delivered"] < 250
    assert row["times_delivered"] == 1
    assert await broker.reclaim(STREAM, GROUP, "c2", min_idle=0.25) == []


async def test_auto_extend_keeps_unsettled_deliveries_from_being_reclaimed(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    for i in range(3):
        await broker.publish(STREAM, Message(i))
    gen = broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=0.2, lease=0.6, batch_size=10))
    async with asyncio.timeout(20):
        held = await anext(gen)  # the two others wait in the consumer's buffer
        for _ in range(6):
            await asyncio.sleep(0.3)
            assert await broker.reclaim(STREAM, GROUP, "thief", min_idle=0.6) == []
        await held.ack()
    await gen.aclose()


async def test_deleted_entries_found_by_xautoclaim_are_surfaced(
    make_broker: BrokerFactory, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    await broker.publish(STREAM, Message("keep"))
    await raw.xgroup_create(STREAM, "other", id="0")  # so nobody else deletes entries
    gone = await broker.publish(STREAM, Message("gone"))
    await take(broker, 2, "dead-worker", ConsumeOptions(block=0.2, auto_extend=False))
    await raw.xdel(STREAM, gone)

    with caplog.at_level(logging.WARNING, logger="orchestrator_broker.redis"):
        taken = await broker.reclaim(STREAM, GROUP, "c2", min_idle=0)

    assert [d.message.payload for d in taken] == ["keep"]
    [dead] = await broker.dead_letters(STREAM)
    assert dead.original_entry_id == gone
    assert dead.reason == DELETED_REASON
    assert dead.group == GROUP
    assert gone in caplog.text


async def test_own_pending_entries_deleted_meanwhile_are_surfaced(
    make_broker: BrokerFactory, raw: aioredis.Redis
) -> None:
    first = make_broker()
    await first.ensure_group(STREAM, GROUP)
    gone = await first.publish(STREAM, Message("gone"))
    await take(first, 1)
    await first.close()
    await raw.xdel(STREAM, gone)
    kept = await make_broker().publish(STREAM, Message("next"))

    [delivery] = await take(make_broker(), 1)

    assert delivery.entry_id == kept
    [dead] = await make_broker().dead_letters(STREAM)
    assert (dead.original_entry_id, dead.reason) == (gone, DELETED_REASON)
    assert await make_broker().pending_count(STREAM, GROUP) == 1  # only "next"


async def test_unyielded_entries_are_handed_back_when_the_iterator_closes(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    for i in range(5):
        await broker.publish(STREAM, Message(i))
    [first] = await take(broker, 1, options=ConsumeOptions(block=0.2, batch_size=10))

    rest = await take(broker, 4, "c2")

    assert sorted(d.message.payload for d in rest) == [1, 2, 3, 4]
    assert all(d.delivery_count == 1 for d in rest)
    assert first.message.payload == 0


async def test_close_ends_consumers_and_is_idempotent(make_broker: BrokerFactory) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    seen: list[Delivery] = []

    async def consume() -> None:
        async for delivery in broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=5.0)):
            seen.append(delivery)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    await broker.close()
    async with asyncio.timeout(10):
        await task
    await broker.close()
    assert seen == []
    with pytest.raises(BrokerUnavailable):
        await broker.publish(STREAM, Message("late"))


async def test_a_thousand_concurrent_publishes_and_acks_share_pipelines(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    batches: list[int] = []
    send = broker._writes._send

    async def counting_send(batch: list[Any]) -> None:
        batches.append(len(batch))
        await send(batch)

    broker._writes._send = counting_send  # type: ignore[method-assign]
    ids = await asyncio.gather(*(broker.publish(STREAM, Message(i)) for i in range(1000)))
    assert len(set(ids)) == 1000
    assert len(batches) <= 5  # coalesced, not one round trip each

    options = ConsumeOptions(block=0.2, batch_size=1000)
    deliveries = await take(broker, 1000, options=options)
    batches.clear()
    await asyncio.gather(*(d.ack() for d in deliveries))
    assert len(batches) <= 5
    assert await broker.pending_count(STREAM, GROUP) == 0
    assert await broker.backlog(STREAM, GROUP) == 0


async def test_an_idle_stream_with_a_block_near_the_read_timeout_does_not_raise(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker(read_timeout=1.5)
    await broker.ensure_group(STREAM, GROUP)
    gen = broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=1.0))
    task = asyncio.ensure_future(anext(gen))
    await asyncio.sleep(4.0)  # several empty blocking reads
    assert not task.done()
    await broker.publish(STREAM, Message("finally"))
    async with asyncio.timeout(10):
        delivery = await task
    assert delivery.message.payload == "finally"
    await gen.aclose()


def test_a_block_at_or_above_the_read_timeout_is_refused(make_broker: BrokerFactory) -> None:
    broker = make_broker(read_timeout=2.0)
    with pytest.raises(ConfigError, match="read_timeout"):
        broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=2.0))


async def test_backlog_counts_undelivered_and_delayed_entries(
    make_broker: BrokerFactory, raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    ids = [await broker.publish(STREAM, Message(i)) for i in range(4)]
    [delivery] = await take(broker, 1, options=ConsumeOptions(block=0.2, batch_size=1))
    await delivery.nack(delay=60)
    assert await broker.backlog(STREAM, GROUP) == 3 + 1
    assert await broker.pending_count(STREAM, GROUP) == 0

    await raw.xdel(STREAM, ids[2])  # Redis 7 then reports lag as nil
    assert await broker.backlog(STREAM, GROUP) == 2 + 1
    assert await broker.backlog("nothing-here", GROUP) == 0
    assert await broker.pending_count("nothing-here", GROUP) == 0


async def test_one_failing_write_fails_only_its_own_caller(
    make_broker: BrokerFactory, raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await raw.set("not-a-stream", "x")

    results = await asyncio.gather(
        broker.publish(STREAM, Message(1)),
        broker.publish("not-a-stream", Message(2)),
        broker.publish(STREAM, Message(3)),
        return_exceptions=True,
    )

    assert isinstance(results[0], str)
    assert isinstance(results[2], str)
    assert isinstance(results[1], BrokerError)
    assert not isinstance(results[1], BrokerUnavailable)
    assert "WRONGTYPE" in str(results[1])
    assert await raw.xlen(STREAM) == 2


async def test_auto_extend_renews_every_delivery_in_one_batched_call(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    for i in range(50):
        await broker.publish(STREAM, Message(i))
    calls: list[int] = []
    extend = broker._extend

    async def counting_extend(stream: str, group: str, consumer: str, ids: list[str]) -> list[str]:
        calls.append(len(ids))
        return await extend(stream, group, consumer, ids)

    broker._extend = counting_extend  # type: ignore[method-assign]
    gen = broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=0.2, lease=0.9, batch_size=50))
    async with asyncio.timeout(20):
        held = [await anext(gen) for _ in range(10)]  # 40 more wait in the buffer
        await asyncio.sleep(1.0)  # about three renewal periods
    assert calls
    assert all(n == 50 for n in calls)  # yielded and buffered, all in one call
    assert len(calls) <= 4
    for delivery in held:
        await delivery.ack()
    await gen.aclose()


async def test_acks_fail_with_broker_unavailable_when_redis_is_down(
    redis_server_factory: Callable[..., Any],
) -> None:
    server = redis_server_factory()
    broker = RedisStreamsBroker.from_url(server.url)
    try:
        await broker.ensure_group(STREAM, GROUP)
        await broker.publish(STREAM, Message("x"))
        [delivery] = await take(broker, 1)
        server.kill()
        with pytest.raises(BrokerUnavailable) as caught:
            await delivery.ack()
        assert caught.value.__cause__ is not None
        assert not delivery.settled  # it may be retried
        server.start()
        await delivery.ack()  # lost with the data, so a no-op, but no error
    finally:
        await broker.close()


async def test_cancelling_a_consuming_task_always_ends_it(make_broker: BrokerFactory) -> None:
    # redis-py sends through asyncio.wait_for, which on Python 3.11 can swallow a cancel
    # that lands as a command completes; the loop must still end.
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    options = ConsumeOptions(block=0.01, reclaim_interval=0.001)

    async def consume() -> None:
        async for delivery in broker.consume(STREAM, GROUP, "c1", options):
            await delivery.ack()

    for i in range(40):
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.002 * (i % 10))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)  # no second cancel to rescue it
        assert task in done, f"cancel {i} was swallowed"
        assert task.cancelled()


async def test_a_cancel_that_the_read_swallowed_still_ends_the_consumer(
    make_broker: BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministically what the test above catches now and then: the cancel reaches the
    blocking read just as its command completes, and the read returns its reply instead
    of raising (redis-py's asyncio.wait_for on Python 3.11); the consumer still ends."""
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    reading = asyncio.Event()

    async def swallowing(self: Any, block: float) -> Any:
        reading.set()
        try:
            await asyncio.sleep(HANG)
        except asyncio.CancelledError:
            return []  # completed as the cancel landed: a reply, no CancelledError
        raise AssertionError("unreachable")

    monkeypatch.setattr(_redis_consumer.ConsumerLoop, "_xreadgroup", swallowing)

    async def consume() -> None:
        async for _ in broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=5.0)):
            raise AssertionError("nothing was published")

    task = asyncio.create_task(consume())
    async with asyncio.timeout(HANG):
        await reading.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=HANG)  # no second cancel to rescue it
    assert task in done
    assert task.cancelled()


async def test_nacking_an_entry_deleted_meanwhile_records_it(
    make_broker: BrokerFactory, raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    entry_id = await broker.publish(STREAM, Message("vanishes"))
    [delivery] = await take(broker, 1)
    await raw.xdel(STREAM, entry_id)

    await delivery.nack(delay=5)

    [dead] = await broker.dead_letters(STREAM)
    assert (dead.original_entry_id, dead.reason) == (entry_id, DELETED_REASON)
    assert await raw.zcard(delayed_key(STREAM)) == 0
    assert await broker.pending_count(STREAM, GROUP) == 0


async def test_a_group_deleted_over_and_over_does_not_spin(
    make_broker: BrokerFactory, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    turns = 0
    ensure = broker.ensure_group

    async def counting_ensure(stream: str, group: str) -> None:
        nonlocal turns
        turns += 1
        await ensure(stream, group)
        await raw.xgroup_destroy(stream, group)  # gone again before the read

    broker.ensure_group = counting_ensure  # type: ignore[method-assign]
    gen = broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=0.1))
    task = asyncio.ensure_future(anext(gen))
    with caplog.at_level(logging.WARNING, logger="orchestrator_broker.redis"):
        await asyncio.sleep(2.0)
    task.cancel()
    await asyncio.wait({task})
    await gen.aclose()
    assert 2 <= turns <= 30  # backing off, not hundreds of attempts
    assert caplog.text.count("is gone") == 1


async def test_a_flag_watcher_resubscribes_after_a_redis_restart(
    redis_server_factory: Callable[..., Any],
) -> None:
    server = redis_server_factory()
    broker = RedisStreamsBroker.from_url(server.url)
    watcher = broker.watch_flags("cancel")
    try:
        async with asyncio.timeout(30):
            assert await anext(watcher) == SUBSCRIBED
            server.kill()
            server.start()
            # Subscribed again: it says so, so that its caller can check what it missed.
            assert await anext(watcher) == SUBSCRIBED
            await broker.raise_flag("cancel", "t1", ttl=60)
            assert await anext(watcher) == "t1"
    finally:
        await watcher.aclose()
        await broker.close()
