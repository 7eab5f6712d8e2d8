"""The Broker contract for keyed (fair) publishing, on every adapter: fair shares across keys,
priorities and aging within a key, caps across consumers, and the at-least-once machinery
(leases, nack, defer, dead letters, counts) unchanged for keyed entries.

Orders are asserted, never timings; where a test shows that nothing more arrives it waits a
few block periods, which only a bug could fill.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from orchestrator_broker import Broker, ConsumeOptions, Delivery, Fairness, Message
from tests.broker.test_contract import GROUP, Collector, take, wait_until

ONE = ConsumeOptions(batch_size=1, block=0.1, lease=30.0)


def keyed(key: str, n: int, priority: str = "normal") -> Message:
    return Message({"key": key, "n": n, "priority": priority})


def key_of(delivery: Delivery) -> str:
    key: str = delivery.message.payload["key"]
    return key


async def drain(broker: Broker, stream: str, n: int, options: ConsumeOptions = ONE) -> list[str]:
    """The keys of the next ``n`` deliveries of one consumer that acks each at once."""
    keys: list[str] = []
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", options)) as consumer:
        for delivery in await take_acking(consumer, n):
            keys.append(key_of(delivery))
    return keys


async def take_acking(consumer: object, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(20):
        async for delivery in consumer:  # type: ignore[attr-defined]
            got.append(delivery)
            await delivery.ack()
            if len(got) == n:
                break
    return got


async def test_a_flood_from_one_key_does_not_delay_another(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    for i in range(60):
        await broker.publish(stream, keyed("a", i), key="a")
    for i in range(5):
        await broker.publish(stream, keyed("b", i), key="b")
    keys = await drain(broker, stream, 65)
    # Round robin: b's five come in the first dozen, not behind a's sixty.
    last_b = max(i for i, k in enumerate(keys) if k == "b")
    assert last_b < 12, keys
    assert Counter(keys) == {"a": 60, "b": 5}


async def test_within_a_key_entries_stay_in_order(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    for i in range(10):
        await broker.publish(stream, keyed("a", i), key="a")
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", ONE)) as consumer:
        got = await take_acking(consumer, 10)
    assert [d.message.payload["n"] for d in got] == list(range(10))


async def test_weights_share_dispatches(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    for i in range(40):
        await broker.publish(stream, keyed("heavy", i), key="heavy")
        await broker.publish(stream, keyed("light", i), key="light")
    options = ConsumeOptions(
        batch_size=1, block=0.1, lease=30.0, fairness=Fairness(weights={"heavy": 3, "*": 1})
    )
    keys = await drain(broker, stream, 40, options)
    assert 27 <= Counter(keys)["heavy"] <= 33, keys  # 3 of 4


async def test_higher_priority_first_within_a_key(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    for n, priority in enumerate(["low", "normal", "high", "normal", "high"]):
        await broker.publish(stream, keyed("a", n, priority), key="a", priority=priority)  # type: ignore[arg-type]
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", ONE)) as consumer:
        got = await take_acking(consumer, 5)
    assert [d.message.payload["n"] for d in got] == [2, 4, 1, 3, 0]


async def test_an_aged_low_entry_competes_as_normal(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, keyed("a", 0, "low"), key="a", priority="low")
    await asyncio.sleep(0.6)  # older than the aging below; 2 stays younger while 0, 1, 3 go
    await broker.publish(stream, keyed("a", 1), key="a")
    await broker.publish(stream, keyed("a", 2, "low"), key="a", priority="low")
    await broker.publish(stream, keyed("a", 3), key="a")
    options = ConsumeOptions(batch_size=1, block=0.1, lease=30.0, fairness=Fairness(aging=0.5))
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", options)) as consumer:
        got = await take_acking(consumer, 4)
    # 0 waited past the aging and is older than 1; 2 did not and is low.
    assert [d.message.payload["n"] for d in got] == [0, 1, 3, 2]


async def test_a_young_low_entry_waits_for_normal_ones(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, keyed("a", 0, "low"), key="a", priority="low")
    await broker.publish(stream, keyed("a", 1), key="a")
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", ONE)) as consumer:
        got = await take_acking(consumer, 2)
    assert [d.message.payload["n"] for d in got] == [1, 0]


async def test_a_cap_holds_across_consumers_and_blocks_no_other_key(
    broker: Broker, stream: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    for i in range(6):
        await broker.publish(stream, keyed("a", i), key="a")
    for i in range(2):
        await broker.publish(stream, keyed("b", i), key="b")
    options = ConsumeOptions(batch_size=1, block=0.1, lease=30.0, fairness=Fairness(caps={"a": 2}))
    one = Collector(broker.consume(stream, GROUP, "c1", options), ack=False)
    two = Collector(broker.consume(stream, GROUP, "c2", options), ack=False)
    try:
        await wait_until(lambda: _holds(len(one.got) + len(two.got) >= 4))
        await asyncio.sleep(0.5)  # several block periods: nothing else may come
        got = one.got + two.got
        assert Counter(key_of(d) for d in got) == {"a": 2, "b": 2}
        # Settling one of a's gives its share back: exactly one more of a's comes.
        await next(d for d in got if key_of(d) == "a").ack()
        await wait_until(lambda: _holds(len(one.got) + len(two.got) >= 5))
        await asyncio.sleep(0.5)
        assert Counter(key_of(d) for d in one.got + two.got) == {"a": 3, "b": 2}
    finally:
        await one.stop()
        await two.stop()


async def test_a_dead_consumers_cap_share_comes_back_after_its_lease(
    broker: Broker, stream: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    for i in range(3):
        await broker.publish(stream, keyed("a", i), key="a")
    options = ConsumeOptions(
        batch_size=1, block=0.1, lease=0.4, auto_extend=False, fairness=Fairness(caps={"*": 1})
    )
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", options)) as dead:
        (first,) = await take(dead, 1)  # then never settled nor renewed
    survivor = Collector(broker.consume(stream, GROUP, "c2", options))
    try:
        got = await survivor.wait_for(3)
        # The dead one's entry is reclaimed (count 2) and the rest follow, one at a time.
        assert sorted(d.message.payload["n"] for d in got[:3]) == [0, 1, 2]
        again = next(d for d in got if d.entry_id == first.entry_id)
        assert again.delivery_count == 2
    finally:
        await survivor.stop()


async def test_nack_and_defer_of_a_keyed_entry_keep_counts(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, keyed("a", 0), key="a")
    await broker.publish(stream, keyed("a", 1), key="a")
    options = ConsumeOptions(batch_size=1, block=0.1, lease=30.0, fairness=Fairness(caps={"a": 1}))
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", options)) as consumer:
        (first,) = await take(consumer, 1)
        assert (first.message.payload["n"], first.delivery_count) == (0, 1)
        await first.nack(0.2)
        # Back to the front of its key's queue once due: the cap share went with it.
        (second,) = await take(consumer, 1)
        assert second.message.payload["n"] == 1
        await second.ack()
        (third,) = await take(consumer, 1)
        assert (third.message.payload["n"], third.delivery_count) == (0, 2)
        await third.defer(0)
        (fourth,) = await take(consumer, 1)
        assert (fourth.message.payload["n"], fourth.delivery_count) == (0, 2)
        await fourth.dead_letter("no good")
    (dead,) = await broker.dead_letters(stream)
    assert (dead.reason, dead.delivery_count) == ("no good", 2)
    assert dead.message is not None
    assert dead.message.payload["n"] == 0
    assert await broker.backlog(stream, GROUP) == 0
    assert await broker.pending_count(stream, GROUP) == 0


async def test_max_deliveries_holds_for_keyed_entries(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, keyed("a", 0), key="a")
    options = ConsumeOptions(batch_size=1, block=0.1, lease=30.0, max_deliveries=2)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", options)) as consumer:
        for _ in range(2):
            (delivery,) = await take(consumer, 1)
            await delivery.nack()
        await broker.publish(stream, keyed("a", 1), key="a")
        (delivery,) = await take(consumer, 1)  # not the poison a third time
        assert delivery.message.payload["n"] == 1
        await delivery.ack()
    (dead,) = await broker.dead_letters(stream)
    assert dead.delivery_count == 2
    assert await broker.backlog(stream, GROUP) == 0


async def test_backlog_counts_waiting_keyed_entries(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    for i in range(4):
        await broker.publish(stream, keyed("a", i), key="a")
    await broker.publish(stream, keyed("b", 0), key="b")
    assert await broker.backlog(stream, GROUP) == 5
    keys = await drain(broker, stream, 5)
    assert sorted(keys) == ["a", "a", "a", "a", "b"]
    assert await broker.backlog(stream, GROUP) == 0


async def test_queue_depths_count_waiting_keyed_entries_by_priority(
    broker: Broker, stream: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    assert await broker.queue_depths(stream, GROUP) == {"high": 0, "normal": 0, "low": 0}
    for priority, n in (("high", 1), ("normal", 3), ("low", 2)):
        for i in range(n):
            await broker.publish(stream, keyed("a", i, priority), key="a", priority=priority)  # type: ignore[arg-type]
    await broker.publish(stream, Message({"key": "-", "n": 0}))  # unkeyed: backlog only
    assert await broker.queue_depths(stream, GROUP) == {"high": 1, "normal": 3, "low": 2}
    assert sorted(await drain(broker, stream, 3)) == ["-", "a", "a"]  # a's high, then normal
    assert await broker.queue_depths(stream, GROUP) == {"high": 0, "normal": 2, "low": 2}


async def test_a_nacked_keyed_entry_counts_at_its_priority_while_it_waits(
    broker: Broker, stream: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, keyed("a", 0, "low"), key="a", priority="low")
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", ONE)) as consumer:
        (delivery,) = await take(consumer, 1)
        assert await broker.queue_depths(stream, GROUP) == {"high": 0, "normal": 0, "low": 0}
        await delivery.nack(30)
        assert await broker.queue_depths(stream, GROUP) == {"high": 0, "normal": 0, "low": 1}
        assert await broker.waiting_keys(stream) == {"a": 1}


async def test_waiting_keys_lists_the_keys_with_most_waiting(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    assert await broker.waiting_keys(stream) == {}
    for key, n in (("a", 5), ("b", 1), ("c", 3)):
        for i in range(n):
            await broker.publish(stream, keyed(key, i), key=key)
    assert await broker.waiting_keys(stream, 2) == {"a": 5, "c": 3}
    assert list(await broker.waiting_keys(stream)) == ["a", "c", "b"]
    await drain(broker, stream, 9)
    assert await broker.waiting_keys(stream) == {}
    with pytest.raises(ValueError, match="top"):
        await broker.waiting_keys(stream, 0)


async def test_many_keys_each_get_a_turn(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    keys = [f"tenant-{i}" for i in range(300)]
    for round_ in range(2):
        await asyncio.gather(*(broker.publish(stream, keyed(k, round_), key=k) for k in keys))
    options = ConsumeOptions(batch_size=20, block=0.1, lease=30.0)
    got = await drain(broker, stream, 600, options)
    # Every key's first entry comes before any key's second (up to one in-flight batch).
    first_half = Counter(got[:300])
    assert len(first_half) >= 280
    assert Counter(got) == dict.fromkeys(keys, 2)


async def test_unkeyed_publishing_is_unchanged_beside_keyed(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, keyed("a", 0), key="a")
    await broker.publish(stream, Message({"key": "-", "n": 1}))
    keys = await drain(broker, stream, 2)
    assert sorted(keys) == ["-", "a"]


@pytest.mark.parametrize(
    ("key", "priority"),
    [("", "normal"), ("a", "urgent"), ("a" * 201, "low"), ("}a", "normal"), ("a{b}", "high")],
)
async def test_publish_refuses_a_bad_key_or_priority(
    broker: Broker, stream: str, key: str, priority: str
) -> None:
    with pytest.raises(ValueError, match=r"key|priority"):
        await broker.publish(stream, Message(1), key=key, priority=priority)  # type: ignore[arg-type]


def _holds(value: bool) -> asyncio.Future[bool]:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
