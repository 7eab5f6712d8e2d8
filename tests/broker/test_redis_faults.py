"""Redis going away under a running consumer: crash with AOF, data loss, a deleted group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from orchestrator_broker import (
    PRIORITIES,
    BrokerUnavailable,
    ConsumeOptions,
    Fairness,
    Message,
    Priority,
)
from orchestrator_broker.redis_streams import RedisStreamsBroker
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

STREAM, GROUP = "tasks", "workers"
UNAVAILABLE = "Redis unavailable for consumer"


async def publish_until_accepted(
    broker: RedisStreamsBroker, message: Message, *, fair: bool = False
) -> None:
    """What the API does on 503, compressed: retry until Redis accepts it. ``fair``: keyed
    by one of seven tenants, with a priority, as the API publishes tasks."""
    n: int = message.payload
    key = f"tenant-{n % 7}" if fair else None
    priority: Priority = PRIORITIES[n % 3] if fair else "normal"
    async with asyncio.timeout(60):
        while True:
            try:
                await broker.publish(STREAM, message, key=key, priority=priority)
                return
            except BrokerUnavailable:
                await asyncio.sleep(0.05)


class Worker:
    """A consumer task that acks everything and records what it settled."""

    def __init__(self, broker: RedisStreamsBroker, name: str, options: ConsumeOptions) -> None:
        self.acked: set[int] = set()
        self.task = asyncio.create_task(self._run(broker, name, options))

    async def _run(self, broker: RedisStreamsBroker, name: str, options: ConsumeOptions) -> None:
        async for delivery in broker.consume(STREAM, GROUP, name, options):
            await asyncio.sleep(0.001)
            # Count an attempted ack: if Redis dies after XACK but before the reply, the
            # entry is settled all the same (the pending count proves it below).
            self.acked.add(delivery.message.payload)
            with contextlib.suppress(BrokerUnavailable):
                await delivery.ack()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for worker in made:
        await worker.stop()


async def settled(broker: RedisStreamsBroker) -> bool:
    try:
        pending = await broker.pending_count(STREAM, GROUP)
        backlog = await broker.backlog(STREAM, GROUP)
    except BrokerUnavailable:
        return False
    return pending == 0 and backlog == 0


@pytest.mark.slow
@pytest.mark.parametrize("fair", [False, True], ids=["fifo", "fair"])
async def test_consumers_survive_a_crash_and_lose_nothing(
    redis_server_factory: Callable[..., RedisServer],
    workers: list[Worker],
    caplog: pytest.LogCaptureFixture,
    fair: bool,
) -> None:
    """SIGKILL Redis (AOF, fsync always) mid-consume: every accepted entry is still settled
    once it is back. Fair: most entries wait in the waiting room (keyed, three priorities,
    tenants capped at 3 running) when it dies, a few on the stream or pending."""
    server = redis_server_factory(appendonly=True)
    broker = RedisStreamsBroker.from_url(server.url, trim_interval=None)
    caplog.set_level(logging.WARNING, logger="orchestrator_broker.redis")
    fairness = Fairness(weights={"tenant-0": 3}, caps={"*": 3}) if fair else None
    options = ConsumeOptions(
        block=0.2, lease=1.5, reclaim_interval=0.3, batch_size=20, fairness=fairness
    )
    try:
        await broker.ensure_group(STREAM, GROUP)
        workers += [Worker(broker, f"w{i}", options) for i in range(2)]
        total = 600
        publisher = asyncio.gather(
            *(publish_until_accepted(broker, Message(i), fair=fair) for i in range(total // 2))
        )
        await publisher
        async with asyncio.timeout(30):
            while sum(len(w.acked) for w in workers) < total // 4:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        server.kill()  # SIGKILL mid-consume
        late = asyncio.gather(
            *(
                publish_until_accepted(broker, Message(i), fair=fair)
                for i in range(total // 2, total)
            )
        )
        await asyncio.sleep(1.0)
        server.start()
        await late

        async with asyncio.timeout(60):
            while not (  # noqa: ASYNC110 - polling Redis
                set().union(*(w.acked for w in workers)) == set(range(total))
                and await settled(broker)
            ):
                await asyncio.sleep(0.1)
        assert all(not w.task.done() for w in workers)  # they recovered by themselves
        outage_logs = [r for r in caplog.records if UNAVAILABLE in r.getMessage()]
        assert 1 <= len(outage_logs) <= len(workers)  # once per consumer per outage
    finally:
        for worker in workers:
            await worker.stop()
        await broker.close()


async def test_a_deleted_group_is_recreated(
    redis_server_factory: Callable[..., RedisServer],
    workers: list[Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    broker = RedisStreamsBroker.from_url(server.url)
    raw = aioredis.Redis.from_url(server.url)
    caplog.set_level(logging.WARNING, logger="orchestrator_broker.redis")
    try:
        await broker.ensure_group(STREAM, GROUP)
        worker = Worker(broker, "w1", ConsumeOptions(block=0.2))
        workers.append(worker)
        await broker.publish(STREAM, Message(1))
        await wait_for(lambda: 1 in worker.acked)

        await raw.xgroup_destroy(STREAM, GROUP)
        await broker.publish(STREAM, Message(2))

        await wait_for(lambda: 2 in worker.acked)
        assert "is gone" in caplog.text
        assert not worker.task.done()
    finally:
        await raw.aclose()
        await broker.close()


async def test_a_restart_without_persistence_is_survived(
    redis_server_factory: Callable[..., RedisServer],
    workers: list[Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    broker = RedisStreamsBroker.from_url(server.url)
    caplog.set_level(logging.WARNING, logger="orchestrator_broker.redis")
    try:
        await broker.ensure_group(STREAM, GROUP)
        worker = Worker(broker, "w1", ConsumeOptions(block=0.2))
        workers.append(worker)
        await broker.publish(STREAM, Message(1))
        await wait_for(lambda: 1 in worker.acked)

        server.kill()
        await asyncio.sleep(1.5)  # several reconnect attempts
        server.start()  # empty: no stream, no group
        await publish_until_accepted(broker, Message(2))

        await wait_for(lambda: 2 in worker.acked)
        assert len([r for r in caplog.records if UNAVAILABLE in r.getMessage()]) == 1
        assert not worker.task.done()
    finally:
        await broker.close()


async def test_publish_and_ping_fail_fast_when_redis_is_down(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    broker = RedisStreamsBroker.from_url(server.url)
    try:
        await broker.publish(STREAM, Message("ok"))
        server.kill()
        async with asyncio.timeout(10):  # hang guard; it fails at once
            with pytest.raises(BrokerUnavailable):
                await broker.publish(STREAM, Message("lost?"))
            with pytest.raises(BrokerUnavailable):
                await broker.ping()
        server.start()
        await broker.ping()
    finally:
        await broker.close()


async def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polling state set by other tasks
            await asyncio.sleep(0.02)
