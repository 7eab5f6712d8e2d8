"""Random histories against the in-memory broker: nothing is lost, nothing settles twice.

Hypothesis draws a sequence of publishes, settlements (ack, nack, dead-letter), abandoned
deliveries and reclaims; after a final drain every message must have been acked or
dead-lettered exactly once, with delivery counts that rise by one per delivery and never
pass ``max_deliveries``.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator_broker import ConsumeOptions, Delivery, MemoryBroker, Message

STREAM, GROUP = "tasks", "workers"
ACTIONS = ("publish", "ack", "nack", "dead_letter", "abandon", "reclaim")


class History:
    """The run of one example: what was published, delivered and finally settled."""

    def __init__(self, broker: MemoryBroker, max_deliveries: int) -> None:
        self.broker = broker
        self.options = ConsumeOptions(
            batch_size=1,
            block=0.01,
            lease=3600.0,
            max_deliveries=max_deliveries,
            auto_extend=False,
        )
        self.published: list[str] = []
        self.counts: defaultdict[str, list[int]] = defaultdict(list)
        self.finals: Counter[str] = Counter()
        self.generation = 0
        self.consumer = self._new_consumer()

    def _new_consumer(self) -> AsyncGenerator[Delivery, None]:
        self.generation += 1
        return self.broker.consume(STREAM, GROUP, f"c{self.generation}", self.options)

    async def next_delivery(self) -> Delivery | None:
        if await self.broker.backlog(STREAM, GROUP) == 0:
            return None
        try:
            delivery = await asyncio.wait_for(anext(self.consumer), 0.05)
        except TimeoutError:
            # Everything left was past max_deliveries (dead-lettered on the way); the timeout
            # ended that iterator, so read on with a fresh consumer name.
            self.consumer = self._new_consumer()
            return None
        self.counts[delivery.message.id].append(delivery.delivery_count)
        assert delivery.delivery_count <= self.options.max_deliveries
        return delivery

    async def settle(self, delivery: Delivery, action: str) -> None:
        if action == "ack":
            await delivery.ack()
            self.finals[delivery.message.id] += 1
        elif action == "nack":
            await delivery.nack(0.0)
        elif action == "dead_letter":
            await delivery.dead_letter("drawn by hypothesis")
        # "abandon": leave it pending, as a crashed consumer would

    async def reclaim_all(self) -> None:
        # The public reclaim() is a tool's: it takes no max_deliveries, so it may hand out
        # one delivery past it (consume() would have dead-lettered the entry instead).
        for delivery in await self.broker.reclaim(STREAM, GROUP, "rescuer", min_idle=0.0):
            self.counts[delivery.message.id].append(delivery.delivery_count)
            await delivery.ack()
            self.finals[delivery.message.id] += 1

    async def run(self, actions: list[str]) -> None:
        await self.broker.ensure_group(STREAM, GROUP)
        for action in actions:
            if action == "publish":
                self.published.append(await self.broker.publish(STREAM, Message("x")))
            elif action == "reclaim":
                await self.reclaim_all()
            else:
                delivery = await self.next_delivery()
                if delivery is not None:
                    await self.settle(delivery, action)
        await self.reclaim_all()
        for _ in range(10 * len(actions) + 10):  # bounded drain
            delivery = await self.next_delivery()
            if delivery is not None:
                await self.settle(delivery, "ack")
            elif await self.broker.backlog(STREAM, GROUP) == 0:
                break
        await self.consumer.aclose()


async def scenario(actions: list[str], max_deliveries: int) -> None:
    broker = MemoryBroker()
    history = History(broker, max_deliveries)
    await history.run(actions)
    assert await broker.pending_count(STREAM, GROUP) == 0
    assert await broker.backlog(STREAM, GROUP) == 0
    dead = await broker.dead_letters(STREAM, count=10_000)
    for letter in dead:
        assert letter.message is not None
        history.finals[letter.message.id] += 1
        assert 1 <= letter.delivery_count <= max_deliveries
    published = await broker_message_ids(broker, len(history.published))
    assert {i: history.finals[i] for i in published} == dict.fromkeys(published, 1)
    for counts in history.counts.values():
        assert counts == list(range(1, len(counts) + 1))
    await broker.close()


async def broker_message_ids(broker: MemoryBroker, count: int) -> list[str]:
    """The message ids of everything published (read back through a fresh group)."""
    ids: list[str] = []
    if count == 0:
        return ids
    options = ConsumeOptions(block=0.01, lease=3600.0, max_deliveries=1_000_000)
    consumer = broker.consume(STREAM, "audit", "auditor", options)
    try:
        while len(ids) < count:
            delivery = await asyncio.wait_for(anext(consumer), 5.0)
            ids.append(delivery.message.id)
            await delivery.ack()
    finally:
        await consumer.aclose()
    return ids


@settings(deadline=None, max_examples=100)
@given(
    actions=st.lists(st.sampled_from(ACTIONS), max_size=40),
    max_deliveries=st.integers(min_value=1, max_value=4),
)
def test_every_message_is_settled_exactly_once(actions: list[str], max_deliveries: int) -> None:
    asyncio.run(scenario(actions, max_deliveries))
