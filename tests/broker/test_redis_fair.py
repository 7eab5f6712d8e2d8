"""The Redis adapter's waiting room itself: cap shares released with the settle, each
tenant's keys in one Redis Cluster hash slot, and 10,000 tenants at a constant cost per
dispatch (the shared behaviour is in test_contract_fair.py)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from orchestrator_broker import ConsumeOptions, Delivery, Fairness, Message
from orchestrator_broker._redis_fair import capped_key, run_key
from orchestrator_broker.redis_streams import RedisDelivery, RedisStreamsBroker
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

STREAM, GROUP = "tasks", "workers"
CAPPED = ConsumeOptions(batch_size=1, block=0.1, lease=30.0, fairness=Fairness(caps={"a": 1}))


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisStreamsBroker]:
    made = RedisStreamsBroker.from_url(redis_url, trim_interval=None)
    await made.ensure_group(STREAM, GROUP)
    yield made
    await made.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


class Recorder:
    """Records the commands the broker's write coalescer sends (what one settle costs)."""

    def __init__(self, broker: RedisStreamsBroker) -> None:
        self.commands: list[str] = []
        call = broker._writes.call

        async def recording(*args: Any) -> Any:
            self.commands.append(" ".join(map(str, args[:2])))  # the command (and a sha)
            return await call(*args)

        broker._writes.call = recording  # type: ignore[method-assign]


async def first(broker: RedisStreamsBroker, options: ConsumeOptions) -> Delivery:
    async with asyncio.timeout(20):
        consumer = broker.consume(STREAM, GROUP, "c1", options)
        delivery = await anext(consumer)
        await consumer.aclose()  # nothing else fetched: batch_size=1
    return delivery


@pytest.mark.parametrize("settle", ["ack", "dead_letter"])
async def test_settling_a_capped_entry_releases_its_share_in_the_same_script(
    broker: RedisStreamsBroker, raw: aioredis.Redis, settle: str
) -> None:
    await broker.publish(STREAM, Message(1), key="a")
    await broker.publish(STREAM, Message(2), key="a")
    delivery = await first(broker, CAPPED)
    assert await raw.zrange(run_key(STREAM, "a"), 0, -1) == [delivery.entry_id]
    assert await raw.zscore(capped_key(STREAM), "a") is None  # at its cap: noticed next turn

    recorder = Recorder(broker)
    if settle == "ack":
        await delivery.ack()
    else:
        await delivery.dead_letter("no good")

    # One script: XACK (or the dead letter) and the release cannot be split by a crash.
    # (Sent twice the first time: NOSCRIPT, then loaded and sent again.)
    assert len(set(recorder.commands)) == 1
    assert recorder.commands[0].startswith("EVALSHA ")
    assert await raw.zcard(run_key(STREAM, "a")) == 0
    assert await broker.pending_count(STREAM, GROUP) == 0
    second = await first(broker, CAPPED)  # the share is back at once, not after the lease
    assert second.message.payload == 2
    await second.ack()


async def test_an_entry_dead_lettered_on_read_gives_its_share_back(
    broker: RedisStreamsBroker, raw: aioredis.Redis
) -> None:
    options = ConsumeOptions(
        batch_size=1, block=0.1, lease=30.0, max_deliveries=1, fairness=Fairness(caps={"a": 1})
    )
    await broker.publish(STREAM, Message(1), key="a")
    consumer = broker.consume(STREAM, GROUP, "c1", options)
    async with asyncio.timeout(20):
        await anext(consumer)
    await consumer.aclose()  # the delivery stays pending for c1, counted in a's share
    assert await raw.zcard(run_key(STREAM, "a")) == 1
    # c1 comes back: its own PEL redelivers the entry, past max_deliveries: dead-lettered.
    await broker.publish(STREAM, Message(2), key="a")
    second = await first(broker, options)
    assert second.message.payload == 2
    assert [dead.message.payload for dead in await broker.dead_letters(STREAM)] == [1]  # type: ignore[union-attr]
    await second.ack()
    assert await raw.zcard(run_key(STREAM, "a")) == 0


TENANTS = ["acme", "t-1", "a.b_c", "user@example.com", "x:y", "ü-tenant", "9"]


async def test_every_key_of_a_tenant_is_in_one_cluster_hash_slot(
    broker: RedisStreamsBroker, raw: aioredis.Redis
) -> None:
    caps = Fairness(caps={"*": 1})
    for tenant in TENANTS:
        for priority in ("high", "normal", "low"):
            for n in range(2):
                await broker.publish(STREAM, Message(n), key=tenant, priority=priority)
    options = ConsumeOptions(batch_size=len(TENANTS), block=0.1, lease=30.0, fairness=caps)
    consumer = broker.consume(STREAM, GROUP, "c1", options)
    async with asyncio.timeout(20):
        running = [await anext(consumer) for _ in TENANTS]  # one per tenant: each at its cap
    nacked = running[0]
    assert isinstance(nacked, RedisDelivery)
    await nacked.nack(60)  # a delayed one too (its share goes: its tenant has no run key)
    await consumer.aclose()

    names = [name async for name in raw.scan_iter(count=1000)]
    by_tenant: defaultdict[str, set[str]] = defaultdict(set)
    for name in names:
        for tenant in TENANTS:
            if f"{{{tenant}}}" in name:
                by_tenant[tenant].add(name)
    for tenant in TENANTS:
        kinds = {
            name.removeprefix(f"{STREAM}:").replace(f"{{{tenant}}}", "{t}")
            for name in by_tenant[tenant]
        }
        expected = {"q:{t}:high", "q:{t}:normal", "q:{t}:low"}
        assert kinds >= (expected if tenant == nacked.key else {*expected, "run:{t}"}), kinds
        slots = {key_slot(name.encode()) for name in by_tenant[tenant]}
        assert slots == {key_slot(tenant.encode())}, (tenant, by_tenant[tenant])
    # Every other key is the dispatcher's or the stream's own: no tenant key escapes.
    tenant_keys = set().union(*by_tenant.values())
    others = {name for name in names if name not in tenant_keys}
    assert all(name == STREAM or name.startswith(f"{STREAM}:fair:") for name in others), others


async def test_ten_thousand_tenants_are_all_dispatched(
    broker: RedisStreamsBroker, raw: aioredis.Redis
) -> None:
    tenants = [f"tenant-{i}" for i in range(10_000)]
    for i in range(0, len(tenants), 1000):
        await asyncio.gather(
            *(broker.publish(STREAM, Message(t), key=t) for t in tenants[i : i + 1000])
        )
    assert await broker.backlog(STREAM, GROUP) == 10_000
    assert await raw.zcard(f"{STREAM}:fair:ready") == 10_000
    options = ConsumeOptions(batch_size=500, block=0.1, lease=60.0)
    seen: Counter[str] = Counter()
    consumer = broker.consume(STREAM, GROUP, "c1", options)
    async with asyncio.timeout(120):
        async for delivery in consumer:
            seen[delivery.message.payload] += 1
            await delivery.ack()
            if sum(seen.values()) == len(tenants):
                break
    await consumer.aclose()
    assert seen == dict.fromkeys(tenants, 1)
    assert await broker.backlog(STREAM, GROUP) == 0
    assert await raw.zcard(f"{STREAM}:fair:ready") == 0


async def commands_of_one_turn(server: RedisServer, tenants: int, dispatch: int) -> Counter[str]:
    """The Redis commands (as ``INFO commandstats`` counts them, scripts' own included) one
    consumer turn runs to dispatch ``dispatch`` entries when ``tenants`` tenants wait."""
    broker = RedisStreamsBroker.from_url(server.url, trim_interval=None)
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    stream = f"s{tenants}"
    try:
        await broker.ensure_group(stream, GROUP)
        names = [f"tenant-{i}" for i in range(tenants)]
        for i in range(0, tenants, 1000):
            await asyncio.gather(
                *(broker.publish(stream, Message(t), key=t) for t in names[i : i + 1000])
            )
        options = ConsumeOptions(batch_size=dispatch, fairness=Fairness())
        await client.config_resetstat()
        await broker._promote_dispatch(stream, "c1", options, dispatch)
        stats: dict[str, Any] = await client.info("commandstats")
    finally:
        await broker.close()
        await client.aclose()
    assert await _length(server, stream) == dispatch
    skip = {"cmdstat_evalsha", "cmdstat_info", "cmdstat_config|resetstat", "cmdstat_script|load"}
    return Counter({k: int(v["calls"]) for k, v in stats.items() if k not in skip})


async def _length(server: RedisServer, stream: str) -> int:
    async with aioredis.Redis.from_url(server.url) as client:
        return int(await client.xlen(stream))


async def test_the_commands_of_a_dispatch_do_not_grow_with_the_tenants(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    few = await commands_of_one_turn(server, tenants=50, dispatch=50)
    many = await commands_of_one_turn(server, tenants=10_000, dispatch=50)
    assert many == few
    assert sum(few.values()) < 50 * 20  # a handful of O(1) / O(log n) commands per entry


async def test_what_waits_for_a_fair_consumer_that_starts_is_not_held_for_a_block(
    broker: RedisStreamsBroker,
) -> None:
    """A consumer's first turn drains its own pending entries and takes nothing from the
    waiting room; the turn after it dispatches before it blocks. (With a read that blocks
    25 s, a task waiting meanwhile would miss this guard.)"""
    await broker.publish(STREAM, Message("waiting"), key="acme")
    options = ConsumeOptions(batch_size=10, block=25.0, lease=30.0, fairness=Fairness())
    consumer = broker.consume(STREAM, GROUP, "c1", options)
    async with asyncio.timeout(15):
        delivery = await anext(consumer)
    assert delivery.message.payload == "waiting"
    await delivery.ack()
    await consumer.aclose()
