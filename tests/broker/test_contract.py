"""The Broker contract: every adapter (in-memory, Redis Streams) must pass this one suite, and
so must each wrapped in ``TracingBroker``, which is what the services run.

Leases are short (a few tenths of a second) so that crash recovery is quick to observe;
timeouts here only guard against hangs and are never asserted as upper bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import attrs
import pytest

from orchestrator_broker import (
    SUBSCRIBED,
    AlreadySettled,
    Broker,
    ConfigError,
    ConsumeOptions,
    Delivery,
    LeaseLost,
    MemoryBroker,
    Message,
    RedisStreamsBroker,
)
from orchestrator_telemetry import TracingBroker
from orchestrator_telemetry.propagation import TRACE_HEADERS
from tests.broker.conftest import ADAPTERS, RawPublish, open_adapter

GROUP = "workers"
HANG = 20.0  # hang guard for anything that should happen "soon"
LEASE = 0.4
QUICK = ConsumeOptions(block=0.1, lease=LEASE, auto_extend=False)
# Where a test shows that nothing is reclaimed, a longer lease keeps a busy machine's
# scheduling hiccups from looking like a dead consumer.
SLOW_LEASE = 0.8
PATIENT = ConsumeOptions(block=0.1, lease=SLOW_LEASE, auto_extend=False)
ONE_AT_A_TIME = ConsumeOptions(batch_size=1, block=0.1, lease=30.0)
ENTRY_ID = re.compile(r"^\d+-\d+$")

Consumer = AsyncGenerator[Delivery, None]
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def seen(broker: Broker, message: Message | None) -> Message | None:
    """``message`` as the contract compares it: whole for an adapter; without its trace
    headers under ``TracingBroker``, which replaces them with its ``send`` span's context."""
    if message is None or not isinstance(broker, TracingBroker):
        return message
    headers = {k: v for k, v in message.headers.items() if k not in TRACE_HEADERS}
    return message.replace_headers(headers)


async def take(consumer: Consumer, n: int, timeout: float = HANG) -> list[Delivery]:
    """The next ``n`` deliveries of ``consumer`` (fails the test if they do not come)."""
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.append(await anext(consumer))
    return got


async def publish_many(broker: Broker, stream: str, count: int, chunk: int = 100) -> list[Message]:
    messages = [Message({"n": i}) for i in range(count)]
    for start in range(0, count, chunk):
        await asyncio.gather(*(broker.publish(stream, m) for m in messages[start : start + chunk]))
    return messages


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = HANG) -> None:
    """Poll ``check`` (a broker query) until it holds; there is no event to wait on."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def has_dead_letters(broker: Broker, stream: str) -> bool:
    return bool(await broker.dead_letters(stream))


class Collector:
    """Runs a consumer in the background, recording (and optionally acking) what it gets."""

    def __init__(self, consumer: Consumer, *, ack: bool = True) -> None:
        self.consumer = consumer
        self.ack = ack
        self.got: list[Delivery] = []
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for delivery in self.consumer:
            self.got.append(delivery)
            self.arrived.set()
            if self.ack:
                await delivery.ack()

    async def wait_for(self, n: int, timeout: float = HANG) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len(self.got) < n:
                if self.task.done():
                    self.task.result()  # re-raise what ended the consumer
                    raise AssertionError(f"consumer ended after {len(self.got)} of {n}")
                self.arrived.clear()
                await self.arrived.wait()
        return self.got

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.consumer.aclose()


async def test_publish_consume_ack(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    message = Message({"prompt": "hello", "n": 1})
    entry_id = await broker.publish(stream, message)
    assert ENTRY_ID.match(entry_id)

    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        assert seen(broker, delivery.message) == seen(broker, message)
        if isinstance(broker, TracingBroker):  # the context of its "send" span travels
            assert TRACEPARENT.match(delivery.message.headers["traceparent"])
        assert (delivery.stream, delivery.group, delivery.entry_id) == (stream, GROUP, entry_id)
        assert delivery.delivery_count == 1
        assert not delivery.settled
        assert await broker.pending_count(stream, GROUP) == 1
        await delivery.ack()
        assert delivery.settled
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_entry_ids_increase(broker: Broker, stream: str) -> None:
    ids = [await broker.publish(stream, Message(i)) for i in range(20)]
    keys = [tuple(int(part) for part in i.split("-")) for i in ids]
    assert keys == sorted(keys)
    assert len(set(ids)) == len(ids)


async def test_ensure_group_is_idempotent_and_starts_at_the_beginning(
    broker: Broker, stream: str
) -> None:
    early = Message("published before the group existed")
    await broker.publish(stream, early)
    await broker.ensure_group(stream, GROUP)
    await broker.ensure_group(stream, GROUP)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        assert seen(broker, delivery.message) == seen(broker, early)
        await delivery.ack()


async def test_fifo_within_one_consumer(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    messages = await publish_many(broker, stream, 50, chunk=1)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        deliveries = await take(consumer, 50)
        assert [d.message.id for d in deliveries] == [m.id for m in messages]
        for delivery in deliveries:
            await delivery.ack()


async def test_headers_round_trip(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    message = Message(
        {"text": "héllo ✓"},
        headers={"traceparent": traceparent, "tracestate": "k=v", "tenant": "acme"},
    )
    await broker.publish(stream, message)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        if isinstance(broker, TracingBroker):
            # A republished message never carries its previous hop's parent.
            assert delivery.message.headers["traceparent"] != traceparent
            assert TRACEPARENT.match(delivery.message.headers["traceparent"])
        else:
            assert delivery.message.headers["traceparent"] == traceparent
        assert seen(broker, delivery.message) == seen(broker, message)
        await delivery.ack()


@pytest.mark.parametrize("death", ["generator_closed", "abandoned_without_auto_extend"])
async def test_dead_consumers_deliveries_are_reclaimed(
    broker: Broker, stream: str, death: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    messages = await publish_many(broker, stream, 3)
    options = ConsumeOptions(block=0.1, lease=LEASE, auto_extend=death == "generator_closed")
    dying = broker.consume(stream, GROUP, "dying", options)
    held = await take(dying, 3)
    if death == "generator_closed":
        await dying.aclose()  # the process died: no more lease renewals

    async with contextlib.aclosing(broker.consume(stream, GROUP, "rescuer", QUICK)) as rescuer:
        rescued = await take(rescuer, 3)
        assert sorted(d.entry_id for d in rescued) == sorted(d.entry_id for d in held)
        assert {d.message.id for d in rescued} == {m.id for m in messages}
        assert all(d.delivery_count == 2 for d in rescued)
        for delivery in rescued:
            await delivery.ack()
    assert await broker.pending_count(stream, GROUP) == 0
    await dying.aclose()


@pytest.mark.parametrize("action", ["extend_lease", "nack", "dead_letter"])
async def test_a_reclaimed_delivery_is_lost_to_its_first_consumer(
    broker: Broker, stream: str, action: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, Message("slow"))
    async with (
        contextlib.aclosing(broker.consume(stream, GROUP, "stalled", QUICK)) as stalled,
        contextlib.aclosing(broker.consume(stream, GROUP, "rescuer", QUICK)) as rescuer,
    ):
        (held,) = await take(stalled, 1)
        (rescued,) = await take(rescuer, 1)
        assert rescued.entry_id == held.entry_id
        attempts: dict[str, Callable[[], Awaitable[None]]] = {
            "extend_lease": held.extend_lease,
            "nack": held.nack,
            "dead_letter": lambda: held.dead_letter("too late"),
        }
        attempt = attempts[action]
        with pytest.raises(LeaseLost):
            await attempt()
        # Nothing changed: the entry is still the rescuer's.
        assert await broker.pending_count(stream, GROUP) == 1
        assert await broker.dead_letters(stream) == []
        await rescued.extend_lease()
        await rescued.ack()
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_a_late_ack_from_the_first_consumer_is_harmless(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, Message("done twice"))
    async with (
        contextlib.aclosing(broker.consume(stream, GROUP, "stalled", QUICK)) as stalled,
        contextlib.aclosing(broker.consume(stream, GROUP, "rescuer", QUICK)) as rescuer,
    ):
        (held,) = await take(stalled, 1)
        (rescued,) = await take(rescuer, 1)
        await held.ack()  # the work was done: acking it (XACK) is fine, whoever holds it
        await rescued.ack()
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_lease_extension_prevents_reclaim(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, Message("long task"))
    holder = broker.consume(stream, GROUP, "holder", PATIENT)
    (held,) = await take(holder, 1)
    other = Collector(broker.consume(stream, GROUP, "other", PATIENT))
    try:
        deadline = time.monotonic() + 2.5 * SLOW_LEASE
        while time.monotonic() < deadline:
            await held.extend_lease()
            await asyncio.sleep(SLOW_LEASE / 8)
        assert other.got == []
        await held.ack()
    finally:
        await other.stop()
        await holder.aclose()
    assert await broker.pending_count(stream, GROUP) == 0


async def test_auto_extend_keeps_a_live_consumers_deliveries(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, Message("long task"))
    live = ConsumeOptions(block=0.1, lease=SLOW_LEASE, auto_extend=True)
    holder = broker.consume(stream, GROUP, "holder", live)
    (held,) = await take(holder, 1)
    other = Collector(broker.consume(stream, GROUP, "other", PATIENT))
    try:
        await asyncio.sleep(2.5 * SLOW_LEASE)
        assert other.got == []
        await held.extend_lease()  # still ours
        await held.ack()
    finally:
        await other.stop()
        await holder.aclose()


async def test_reclaim_claims_idle_deliveries(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await publish_many(broker, stream, 2)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "stalled", QUICK)) as stalled:
        held = await take(stalled, 2)
        assert await broker.reclaim(stream, GROUP, "tool", min_idle=60.0) == []
        await asyncio.sleep(LEASE)
        claimed = await broker.reclaim(stream, GROUP, "tool", min_idle=LEASE / 2)
        assert sorted(d.entry_id for d in claimed) == sorted(d.entry_id for d in held)
        assert all(d.delivery_count == 2 for d in claimed)
        for delivery in claimed:
            await delivery.ack()
    assert await broker.pending_count(stream, GROUP) == 0


async def test_nack_with_delay_redelivers_after_the_delay(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    message = Message("retry me")
    await broker.publish(stream, message)
    delay = 0.6
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        (first,) = await take(consumer, 1)
        nacked_at = time.monotonic()
        await first.nack(delay)
        assert first.settled
        # While it waits it belongs to no consumer: not pending, but still in the backlog.
        assert await broker.pending_count(stream, GROUP) == 0
        assert await broker.backlog(stream, GROUP) == 1
        (second,) = await take(consumer, 1)
        assert time.monotonic() - nacked_at >= delay - 0.05
        assert seen(broker, second.message) == seen(broker, message)
        assert second.delivery_count == 2
        await second.ack()
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_defer_redelivers_after_the_delay_without_counting(
    broker: Broker, stream: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    message = Message("wait for me")
    await broker.publish(stream, message)
    delay = 0.4
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        (first,) = await take(consumer, 1)
        await first.nack()  # one real attempt: the count goes to 2
        (second,) = await take(consumer, 1)
        assert second.delivery_count == 2
        deferred_at = time.monotonic()
        await second.defer(delay)
        assert second.settled
        assert await broker.pending_count(stream, GROUP) == 0
        assert await broker.backlog(stream, GROUP) == 1
        (third,) = await take(consumer, 1)
        assert time.monotonic() - deferred_at >= delay - 0.05
        assert seen(broker, third.message) == seen(broker, message)
        assert third.delivery_count == 2  # waiting was not a delivery
        await third.defer(0.0)
        (fourth,) = await take(consumer, 1)
        assert fourth.delivery_count == 2
        await fourth.ack()
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_deferring_never_reaches_max_deliveries(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, Message("patient"))
    options = attrs.evolve(QUICK, max_deliveries=2)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", options)) as consumer:
        for _ in range(5):
            (delivery,) = await take(consumer, 1)
            assert delivery.delivery_count == 1
            await delivery.defer(0.0)
        (last,) = await take(consumer, 1)
        await last.ack()
    assert await broker.dead_letters(stream) == []


async def test_defer_refuses_a_negative_delay_and_a_settled_delivery(
    broker: Broker, stream: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, Message("x"))
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        with pytest.raises(ValueError, match="delay"):
            await delivery.defer(-1.0)
        await delivery.ack()
        with pytest.raises(AlreadySettled):
            await delivery.defer(0.0)


async def test_nacked_entry_goes_to_any_consumer(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, Message("hand back"))
    async with contextlib.aclosing(broker.consume(stream, GROUP, "first", QUICK)) as first:
        (delivery,) = await take(first, 1)
        await delivery.nack()
    async with contextlib.aclosing(broker.consume(stream, GROUP, "second", QUICK)) as second:
        (again,) = await take(second, 1)
        assert again.message == delivery.message
        assert again.delivery_count == 2
        await again.ack()


async def test_dead_letter_with_reason(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    message = Message(
        {"prompt": ""}, headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    )
    entry_id = await broker.publish(stream, message)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        await delivery.dead_letter("invalid_request: empty prompt")
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0
    (dead,) = await broker.dead_letters(stream)
    assert dead.reason == "invalid_request: empty prompt"
    assert dead.original_entry_id == entry_id
    assert dead.group == GROUP
    assert dead.delivery_count == 1
    assert seen(broker, dead.message) == seen(broker, message)
    assert dead.raw_fields["traceparent"] == delivery.message.headers["traceparent"]
    assert ENTRY_ID.match(dead.entry_id)


async def test_dead_letter_after_max_deliveries_by_nack(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    message = Message("poison")
    await broker.publish(stream, message)
    after_poison = Message("next")
    options = ConsumeOptions(block=0.1, lease=LEASE, max_deliveries=3, auto_extend=False)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", options)) as consumer:
        counts = []
        for _ in range(3):
            (delivery,) = await take(consumer, 1)
            assert seen(broker, delivery.message) == seen(broker, message)
            counts.append(delivery.delivery_count)
            await delivery.nack()
        assert counts == [1, 2, 3]
        await broker.publish(stream, after_poison)
        (delivery,) = await take(consumer, 1)  # the poison is not handed out a fourth time
        assert seen(broker, delivery.message) == seen(broker, after_poison)
        await delivery.ack()
    (dead,) = await broker.dead_letters(stream)
    assert seen(broker, dead.message) == seen(broker, message)
    assert dead.delivery_count == 3
    assert "max" in dead.reason
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_dead_letter_after_max_deliveries_by_reclaim(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    message = Message("crashes every worker")
    await broker.publish(stream, message)
    once = ConsumeOptions(block=0.1, lease=LEASE, max_deliveries=1, auto_extend=False)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "crashing", once)) as crashing:
        (delivery,) = await take(crashing, 1)
    # Its consumer died; the next one finds it idle but out of deliveries.
    rescuer = Collector(broker.consume(stream, GROUP, "next", once))
    try:
        await wait_until(lambda: has_dead_letters(broker, stream))
    finally:
        await rescuer.stop()
    assert rescuer.got == []
    (dead,) = await broker.dead_letters(stream)
    assert seen(broker, dead.message) == seen(broker, message)
    assert dead.original_entry_id == delivery.entry_id
    assert dead.delivery_count == 1
    assert await broker.pending_count(stream, GROUP) == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [("ack", "ack"), ("ack", "nack"), ("nack", "dead_letter"), ("dead_letter", "ack")],
)
async def test_settling_twice_raises(broker: Broker, stream: str, first: str, second: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await broker.publish(stream, Message("once"))

    async def settle(delivery: Delivery, how: str) -> None:
        if how == "ack":
            await delivery.ack()
        elif how == "nack":
            await delivery.nack(30.0)
        else:
            await delivery.dead_letter("test")

    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        await settle(delivery, first)
        with pytest.raises(AlreadySettled):
            await settle(delivery, second)
        with pytest.raises(AlreadySettled):
            await delivery.extend_lease()
    assert await broker.pending_count(stream, GROUP) == 0
    assert len(await broker.dead_letters(stream)) == (1 if first == "dead_letter" else 0)


async def test_thousand_deliveries_acked_concurrently(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    messages = await publish_many(broker, stream, 1000)
    options = ConsumeOptions(block=0.1, lease=30.0)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", options)) as consumer:
        deliveries = await take(consumer, 1000, timeout=60.0)
        assert await broker.pending_count(stream, GROUP) == 1000
        await asyncio.gather(*(d.ack() for d in deliveries))
    assert {d.message.id for d in deliveries} == {m.id for m in messages}
    assert all(d.settled for d in deliveries)
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_ten_thousand_messages_over_four_consumers(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    total = 10_000
    options = ConsumeOptions(block=0.1, lease=30.0)
    collectors = [Collector(broker.consume(stream, GROUP, f"c{i}", options)) for i in range(4)]
    try:
        messages = await publish_many(broker, stream, total)
        async with asyncio.timeout(120.0):
            while sum(len(c.got) for c in collectors) < total:
                await asyncio.sleep(0.05)
                for collector in collectors:
                    if collector.task.done():
                        collector.task.result()
        await asyncio.sleep(0.2)  # let the last acks land and any stray duplicate show up
    finally:
        for collector in collectors:
            await collector.stop()
    deliveries = [d for c in collectors for d in c.got]
    seen = Counter(d.message.id for d in deliveries)
    assert set(seen) == {m.id for m in messages}  # none lost
    assert max(seen.values()) == 1  # none duplicated (no lease ran out, nothing was nacked)
    assert all(d.settled for d in deliveries)
    assert sum(1 for c in collectors if c.got) > 1  # the work was actually shared
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_corrupt_and_foreign_entries_are_dead_lettered(
    broker: Broker, stream: str, publish_raw: RawPublish
) -> None:
    await broker.ensure_group(stream, GROUP)
    before, after = Message("before"), Message("after")
    await broker.publish(stream, before)
    await publish_raw(stream, {"id": "abc", "payload": "{not json"})
    await publish_raw(stream, {"event": "written by someone else"})
    await publish_raw(stream, {"id": "abc", "payload": '"ok"', "header": b"\xff\xfe"})
    await broker.publish(stream, after)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        deliveries = await take(consumer, 2)
        assert [seen(broker, d.message) for d in deliveries] == [
            seen(broker, before),
            seen(broker, after),
        ]
        for delivery in deliveries:
            await delivery.ack()
    dead = await broker.dead_letters(stream)
    assert len(dead) == 3
    assert [d.entry_id for d in await broker.dead_letters(stream, count=2)] == [
        d.entry_id for d in dead[:2]
    ]  # oldest first
    assert dead[0].raw_fields["payload"] == "{not json"
    assert all(d.reason and d.message is None and d.group == GROUP for d in dead)
    assert dead[1].raw_fields == {"event": "written by someone else"}
    assert await broker.pending_count(stream, GROUP) == 0
    assert await broker.backlog(stream, GROUP) == 0


async def test_close_ends_every_consumer(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    waiting = ConsumeOptions(block=1.0, lease=30.0)
    collectors = [Collector(broker.consume(stream, GROUP, f"c{i}", waiting)) for i in range(3)]
    await asyncio.sleep(0.1)
    await broker.close()
    await broker.close()  # idempotent
    async with asyncio.timeout(HANG):
        await asyncio.gather(*(c.task for c in collectors))
    assert all(c.got == [] for c in collectors)


async def test_closing_the_iterator_hands_back_unyielded_entries(
    broker: Broker, stream: str
) -> None:
    await broker.ensure_group(stream, GROUP)
    messages = await publish_many(broker, stream, 10)
    greedy = ConsumeOptions(batch_size=10, block=0.1, lease=30.0)
    first = broker.consume(stream, GROUP, "first", greedy)
    kept = await take(first, 2)
    await first.aclose()
    # The other 8 come at once, not after a 30 s lease; the 2 yielded stay "first"'s.
    async with contextlib.aclosing(broker.consume(stream, GROUP, "second", greedy)) as second:
        rest = await take(second, 8)
        assert {d.message.id for d in kept + rest} == {m.id for m in messages}
        for delivery in kept + rest:
            await delivery.ack()
    assert await broker.pending_count(stream, GROUP) == 0


async def test_restarted_consumer_drains_its_own_pending_first(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    messages = await publish_many(broker, stream, 6, chunk=1)
    first_life = broker.consume(stream, GROUP, "worker-1", ONE_AT_A_TIME)
    held = await take(first_life, 3)
    await first_life.aclose()
    async with contextlib.aclosing(
        broker.consume(stream, GROUP, "worker-1", ONE_AT_A_TIME)
    ) as second_life:
        deliveries = await take(second_life, 6)
        assert [d.entry_id for d in deliveries[:3]] == [d.entry_id for d in held]
        assert [d.delivery_count for d in deliveries] == [2, 2, 2, 1, 1, 1]
        assert [d.message.id for d in deliveries] == [m.id for m in messages]
        for delivery in deliveries:
            await delivery.ack()
    assert await broker.pending_count(stream, GROUP) == 0


async def test_pending_count_and_backlog(broker: Broker, stream: str) -> None:
    await broker.ensure_group(stream, GROUP)
    await publish_many(broker, stream, 5)
    assert await broker.backlog(stream, GROUP) == 5
    assert await broker.pending_count(stream, GROUP) == 0
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", ONE_AT_A_TIME)) as consumer:
        first, second = await take(consumer, 2)
        assert await broker.pending_count(stream, GROUP) == 2
        assert await broker.backlog(stream, GROUP) == 3
        await first.nack(60.0)
        assert await broker.pending_count(stream, GROUP) == 1
        assert await broker.backlog(stream, GROUP) == 4
        await second.ack()
        assert await broker.pending_count(stream, GROUP) == 0


async def test_ping(broker: Broker) -> None:
    await broker.ping()


@pytest.fixture(params=ADAPTERS)
async def capped(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A broker keeping 5 dead letters per stream (Redis: trimmed every 0.1 s)."""
    options: dict[str, int | float] = {"dead_letter_maxlen": 5}
    if request.param.endswith("redis"):
        options["trim_interval"] = 0.1
    async with open_adapter(request, request.param, **options) as adapter:
        yield adapter


async def test_only_the_newest_dead_letters_are_kept(capped: Broker, stream: str) -> None:
    await capped.ensure_group(stream, GROUP)
    await publish_many(capped, stream, 20)
    async with contextlib.aclosing(capped.consume(stream, GROUP, "c1", QUICK)) as consumer:
        for n, delivery in enumerate(await take(consumer, 20)):
            await delivery.dead_letter(f"failure {n}")

        async def trimmed() -> bool:
            return len(await capped.dead_letters(stream, count=100)) <= 5

        # At once in memory; on Redis at the next trim pass of a consumer that is reading.
        reading = asyncio.create_task(anext(consumer))
        try:
            await wait_until(trimmed)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    reasons = [dead.reason for dead in await capped.dead_letters(stream, count=100)]
    assert reasons == [f"failure {n}" for n in range(15, 20)]


def test_a_negative_dead_letter_cap_is_refused() -> None:
    with pytest.raises(ConfigError, match="dead_letter_maxlen"):
        MemoryBroker(dead_letter_maxlen=-1)
    with pytest.raises(ConfigError, match="dead_letter_maxlen"):
        RedisStreamsBroker.from_url("redis://127.0.0.1:1/0", dead_letter_maxlen=-1)


# -- dead letters, for operators -------------------------------------------------------------


async def dead_letter_all(broker: Broker, stream: str, count: int) -> list[Message]:
    """Publish ``count`` messages and dead-letter each ("failure <n>"), in order."""
    await broker.ensure_group(stream, GROUP)
    messages = await publish_many(broker, stream, count)
    async with contextlib.aclosing(broker.consume(stream, GROUP, "c1", QUICK)) as consumer:
        for n, delivery in enumerate(await take(consumer, count)):
            await delivery.dead_letter(f"failure {n}")
    return messages


async def test_dead_letters_are_read_a_page_at_a_time(broker: Broker, stream: str) -> None:
    await dead_letter_all(broker, stream, 7)

    pages, after = [], None
    while page := await broker.dead_letters(stream, count=3, after=after):
        pages.append([dead.reason for dead in page])
        after = page[-1].entry_id

    assert pages == [
        ["failure 0", "failure 1", "failure 2"],
        ["failure 3", "failure 4", "failure 5"],
        ["failure 6"],
    ]


async def test_a_dead_letter_says_when_it_was_written(broker: Broker, stream: str) -> None:
    before = time.time()
    await dead_letter_all(broker, stream, 1)
    after = time.time()

    (dead,) = await broker.dead_letters(stream)
    # Entry ids carry milliseconds (the broker's clock; here the same machine's).
    assert before - 0.001 <= dead.dead_at <= after + 0.001


async def test_removing_a_dead_letter_removes_only_that_one(broker: Broker, stream: str) -> None:
    await dead_letter_all(broker, stream, 3)
    first, second, third = await broker.dead_letters(stream)

    assert await broker.remove_dead_letter(stream, second.entry_id) is True
    assert await broker.remove_dead_letter(stream, second.entry_id) is False  # gone already

    assert await broker.dead_letters(stream) == [first, third]
    assert await broker.remove_dead_letter("no-such-stream", first.entry_id) is False


async def test_a_removed_dead_letter_leaves_the_stream_itself_alone(
    broker: Broker, stream: str
) -> None:
    await dead_letter_all(broker, stream, 1)
    (dead,) = await broker.dead_letters(stream)
    await broker.publish(stream, Message("after"))

    await broker.remove_dead_letter(stream, dead.entry_id)

    async with contextlib.aclosing(broker.consume(stream, GROUP, "c2", QUICK)) as consumer:
        (delivery,) = await take(consumer, 1)
        assert delivery.message.payload == "after"
        await delivery.ack()


async def test_purging_removes_every_dead_letter(broker: Broker, stream: str) -> None:
    await dead_letter_all(broker, stream, 4)

    assert await broker.purge_dead_letters(stream) == 4

    assert await broker.dead_letters(stream) == []
    assert await broker.purge_dead_letters(stream) == 0
    assert await broker.purge_dead_letters("no-such-stream") == 0


async def test_purging_by_age_keeps_the_younger_dead_letters(broker: Broker, stream: str) -> None:
    await dead_letter_all(broker, stream, 2)
    # A second apart, so that an age between the two is clear of the clock's resolution and
    # of how long the calls take.
    await asyncio.sleep(1.0)
    await dead_letter_all(broker, stream, 1)
    old, _, young = await broker.dead_letters(stream)
    gap = young.dead_at - old.dead_at
    assert gap >= 0.9

    assert await broker.purge_dead_letters(stream, older_than=3600) == 0
    age_of_old = time.time() - old.dead_at
    assert await broker.purge_dead_letters(stream, older_than=age_of_old - gap / 2) == 2

    assert await broker.dead_letters(stream) == [young]


@pytest.mark.parametrize("older_than", [-1, float("nan"), float("inf")])
async def test_a_purge_age_that_is_not_zero_or_more_seconds_is_refused(
    broker: Broker, stream: str, older_than: float
) -> None:
    with pytest.raises(ValueError, match="older_than"):
        await broker.purge_dead_letters(stream, older_than=older_than)


async def test_an_entry_id_that_is_not_one_is_refused(broker: Broker, stream: str) -> None:
    with pytest.raises(ValueError, match="entry id"):
        await broker.remove_dead_letter(stream, "0-0; DEL x")
    with pytest.raises(ValueError, match="entry id"):
        await broker.dead_letters(stream, after="yesterday")


# -- presence -------------------------------------------------------------------------------


@pytest.fixture
def presence(stream: str) -> str:
    """A presence group no other test uses."""
    return f"presence-{stream}"


async def test_announced_members_are_listed_with_their_payloads(
    broker: Broker, presence: str
) -> None:
    assert await broker.members(presence) == {}
    await broker.announce(presence, "w1", {"models": ["echo"], "n": 1}, ttl=60)
    await broker.announce(presence, "w2", {"models": []}, ttl=60)
    assert await broker.members(presence) == {
        "w1": {"models": ["echo"], "n": 1},
        "w2": {"models": []},
    }


async def test_announcing_again_replaces_the_payload(broker: Broker, presence: str) -> None:
    await broker.announce(presence, "w1", {"v": 1}, ttl=60)
    await broker.announce(presence, "w1", {"v": 2}, ttl=60)
    assert await broker.members(presence) == {"w1": {"v": 2}}


async def test_a_member_whose_ttl_runs_out_is_no_longer_listed(
    broker: Broker, presence: str
) -> None:
    await broker.announce(presence, "short", {}, ttl=0.2)
    await broker.announce(presence, "long", {}, ttl=60)

    async def expired() -> bool:
        return "short" not in await broker.members(presence)

    await wait_until(expired)
    assert await broker.members(presence) == {"long": {}}


async def test_renewing_keeps_a_member_past_its_first_ttl(broker: Broker, presence: str) -> None:
    await broker.announce(presence, "w1", {"v": 1}, ttl=0.2)
    await broker.announce(presence, "w1", {"v": 2}, ttl=60)
    await broker.announce(presence, "gone", {}, ttl=0.2)  # expires after w1's first TTL

    async def expired() -> bool:
        return "gone" not in await broker.members(presence)

    await wait_until(expired)
    assert await broker.members(presence) == {"w1": {"v": 2}}


async def test_a_withdrawn_member_is_gone_at_once(broker: Broker, presence: str) -> None:
    await broker.announce(presence, "w1", {}, ttl=60)
    await broker.announce(presence, "w2", {}, ttl=60)
    await broker.withdraw(presence, "w1")
    await broker.withdraw(presence, "never-there")
    assert await broker.members(presence) == {"w2": {}}


async def test_presence_groups_are_separate(broker: Broker, presence: str) -> None:
    await broker.announce(presence, "w1", {"g": 1}, ttl=60)
    await broker.announce(f"{presence}-other", "w1", {"g": 2}, ttl=60)
    await broker.withdraw(f"{presence}-other", "w1")
    assert await broker.members(presence) == {"w1": {"g": 1}}
    assert await broker.members(f"{presence}-other") == {}


async def test_members_returns_copies(broker: Broker, presence: str) -> None:
    await broker.announce(presence, "w1", {"models": ["echo"]}, ttl=60)
    (await broker.members(presence))["w1"]["models"].append("changed")
    assert await broker.members(presence) == {"w1": {"models": ["echo"]}}


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
async def test_a_ttl_that_is_not_positive_is_refused(
    broker: Broker, presence: str, ttl: float
) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await broker.announce(presence, "w1", {}, ttl=ttl)
    assert await broker.members(presence) == {}


async def test_a_payload_that_is_not_json_is_refused(broker: Broker, presence: str) -> None:
    with pytest.raises(TypeError):
        await broker.announce(presence, "w1", {"x": object()}, ttl=60)
    assert await broker.members(presence) == {}


# -- flags ----------------------------------------------------------------------------------


async def next_flag(watcher: AsyncIterator[str], timeout: float = 5.0) -> str:
    async with asyncio.timeout(timeout):
        return await anext(watcher)


async def test_a_raised_flag_is_stored_and_heard_by_every_watcher(
    broker: Broker, presence: str
) -> None:
    group = f"flags-{presence}"
    first = broker.watch_flags(group)
    second = broker.watch_flags(group)
    other = broker.watch_flags(f"{group}-other")
    try:
        for watcher in (first, second, other):
            assert await next_flag(watcher) == SUBSCRIBED
        assert await broker.raised_flags(group, ["t1", "t2"]) == set()

        await broker.raise_flag(group, "t1", ttl=60)

        assert await broker.raised_flags(group, ["t1", "t2", "t1"]) == {"t1"}
        assert await broker.raised_flags(group, []) == set()
        assert await broker.raised_flags(f"{group}-other", ["t1"]) == set()
        assert await next_flag(first) == "t1"
        assert await next_flag(second) == "t1"
        await broker.raise_flag(f"{group}-other", "t9", ttl=60)
        assert await next_flag(other) == "t9"  # the other group heard its own flag only
    finally:
        for watcher in (first, second, other):
            await watcher.aclose()


async def test_a_flag_goes_when_its_ttl_runs_out(broker: Broker, presence: str) -> None:
    group = f"flags-{presence}"
    await broker.raise_flag(group, "brief", ttl=0.2)
    await broker.raise_flag(group, "lasting", ttl=60)
    assert await broker.raised_flags(group, ["brief", "lasting"]) == {"brief", "lasting"}
    await asyncio.sleep(0.4)
    assert await broker.raised_flags(group, ["brief", "lasting"]) == {"lasting"}


@pytest.mark.parametrize(("name", "ttl"), [("", 60.0), ("x", 0.0), ("x", -1.0)])
async def test_a_bad_flag_is_refused(broker: Broker, presence: str, name: str, ttl: float) -> None:
    with pytest.raises(ValueError, match=r"flag|ttl"):
        await broker.raise_flag(f"flags-{presence}", name, ttl)


async def test_closing_the_broker_ends_its_watchers(broker: Broker, presence: str) -> None:
    watcher = broker.watch_flags(f"flags-{presence}")
    assert await next_flag(watcher) == SUBSCRIBED
    pending = asyncio.ensure_future(anext(watcher))
    await broker.close()
    async with asyncio.timeout(5):
        with contextlib.suppress(StopAsyncIteration):
            await pending
    await watcher.aclose()
