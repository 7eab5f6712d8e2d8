"""Retention: trim only what every group of the stream is done with."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator_broker import ConsumeOptions, Delivery, Message
from orchestrator_broker.redis_streams import RedisStreamsBroker

pytestmark = pytest.mark.redis

STREAM, GROUP = "tasks", "workers"


@pytest.fixture
async def make_broker(redis_url: str) -> AsyncIterator[Callable[..., RedisStreamsBroker]]:
    made: list[RedisStreamsBroker] = []

    def make(**kwargs: Any) -> RedisStreamsBroker:
        made.append(RedisStreamsBroker.from_url(redis_url, **kwargs))
        return made[-1]

    yield make
    for broker in made:
        await broker.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def read(broker: RedisStreamsBroker, n: int, group: str = GROUP) -> list[Delivery]:
    """Exactly ``n`` deliveries, fetched in one batch so none is handed back."""
    out: list[Delivery] = []
    gen = broker.consume(STREAM, group, "c1", ConsumeOptions(block=0.2, batch_size=n))
    async with asyncio.timeout(20):
        async for delivery in gen:
            out.append(delivery)
            if len(out) == n:
                break
    await gen.aclose()
    return out


async def ids_left(raw: aioredis.Redis) -> list[str]:
    entries: Any = await raw.xrange(STREAM)
    return [entry_id.decode() for entry_id, _ in entries]


async def test_trim_keeps_pending_and_undelivered_entries(
    make_broker: Callable[..., RedisStreamsBroker], raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    ids = [await broker.publish(STREAM, Message(i)) for i in range(10)]
    got = await read(broker, 5)
    for delivery in (got[0], got[1], got[3]):  # got[2] and got[4] stay pending
        await delivery.ack()

    assert await broker.trim(STREAM) == 2

    assert await ids_left(raw) == ids[2:]


async def test_trim_after_everything_is_acked_keeps_only_undelivered_entries(
    make_broker: Callable[..., RedisStreamsBroker], raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    ids = [await broker.publish(STREAM, Message(i)) for i in range(6)]
    for delivery in await read(broker, 4):
        await delivery.ack()

    await broker.trim(STREAM)

    assert await ids_left(raw) == ids[4:]


async def test_a_group_that_has_not_read_yet_keeps_everything(
    make_broker: Callable[..., RedisStreamsBroker], raw: aioredis.Redis
) -> None:
    broker = make_broker()
    await broker.ensure_group(STREAM, GROUP)
    await broker.ensure_group(STREAM, "audit")
    ids = [await broker.publish(STREAM, Message(i)) for i in range(3)]
    for delivery in await read(broker, 3):
        await delivery.ack()

    assert await broker.trim(STREAM) == 0
    assert await ids_left(raw) == ids


async def test_a_stream_without_groups_is_never_trimmed(
    make_broker: Callable[..., RedisStreamsBroker], raw: aioredis.Redis
) -> None:
    broker = make_broker()
    for i in range(3):
        await broker.publish(STREAM, Message(i))
    assert await broker.trim(STREAM) == 0
    assert await broker.trim("no-such-stream") == 0
    assert await raw.xlen(STREAM) == 3


async def test_retain_acked_keeps_recent_acked_entries(
    make_broker: Callable[..., RedisStreamsBroker], raw: aioredis.Redis
) -> None:
    broker = make_broker(retain_acked=3600)
    await broker.ensure_group(STREAM, GROUP)
    for i in range(3):
        await broker.publish(STREAM, Message(i))
    for delivery in await read(broker, 3):
        await delivery.ack()

    assert await broker.trim(STREAM) == 0
    assert await raw.xlen(STREAM) == 3


async def test_consumers_trim_periodically(
    make_broker: Callable[..., RedisStreamsBroker], raw: aioredis.Redis
) -> None:
    broker = make_broker(trim_interval=0.1)
    await broker.ensure_group(STREAM, GROUP)
    for i in range(20):
        await broker.publish(STREAM, Message(i))
    gen = broker.consume(STREAM, GROUP, "c1", ConsumeOptions(block=0.1))
    seen = 0
    async with asyncio.timeout(20):
        async for delivery in gen:
            await delivery.ack()
            seen += 1
            if seen == 20:
                break
        # Keep the loop turning (it trims between reads) until the stream is empty.
        waiter = asyncio.ensure_future(anext(gen))
        while await raw.xlen(STREAM):  # noqa: ASYNC110 - polling Redis
            await asyncio.sleep(0.05)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    await gen.aclose()
