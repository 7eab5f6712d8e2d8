"""The results consumer on the real thing: Redis Streams broker, Redis task store, and
two API replicas sharing the ``api`` consumer group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator_api.model import TaskStatus
from orchestrator_api.results import ResultsConsumer
from orchestrator_api.store import RedisTaskStore
from orchestrator_broker import ConsumeOptions, Message
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_tasks.messages import converter
from tests.api.test_store import delta, new_record, started, succeeded

pytestmark = pytest.mark.redis

HANG = 60.0


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisStreamsBroker]:
    made = RedisStreamsBroker.from_url(redis_url)
    yield made
    await made.close()


async def test_two_replicas_apply_interleaved_results_of_many_tasks(
    broker: RedisStreamsBroker, redis_url: str
) -> None:
    replicas = [RedisTaskStore.from_url(redis_url, ttl_seconds=60) for _ in range(2)]
    options = ConsumeOptions(batch_size=50, block=0.1, lease=10.0)
    consumers = [
        ResultsConsumer(broker, store, consumer=f"api-{n}", options=options)
        for n, store in enumerate(replicas)
    ]
    runs = [asyncio.create_task(c.run()) for c in consumers]
    try:
        records = [new_record() for _ in range(200)]
        await asyncio.gather(*(replicas[0].create(r) for r in records))
        for seq in range(5):  # interleaved, as many workers publish them
            batch = [
                started(r)
                if seq == 0
                else delta(r, seq, str(seq))
                if seq < 4
                else succeeded(r, seq, "123")
                for r in records
            ]
            await asyncio.gather(
                *(broker.publish("results", Message(converter.unstructure(e))) for e in batch)
            )

        async with asyncio.timeout(HANG):
            for record in records:
                while True:
                    got = await replicas[1].get("acme", record.id)
                    if got is not None and got.status is TaskStatus.SUCCEEDED:
                        break
                    await asyncio.sleep(0.02)
        everything = [
            ("status", None),
            ("status", None),
            ("delta", "1"),
            ("delta", "2"),
            ("delta", "3"),
        ]
        missing = 0
        for record in records:
            log = await replicas[1].events("acme", record.id)
            seen = [(e.event, e.data.get("text")) for e in log]
            # In order, the result last. A terminal event that overtakes a delta still being
            # applied by the other replica is applied at once (its result holds the whole
            # answer) and the late delta is ignored: what precedes it is then a prefix.
            assert seen[-1] == ("result", "123")
            assert seen[:-1] == everything[: len(seen) - 1]
            missing += len(everything) + 1 - len(seen)
        stats = [c.stats for c in consumers]
        # Every event taken once; a late one ignored (one buffered when the terminal came
        # counts as applied, and is dropped with the buffer).
        assert sum(s.applied + s.ignored for s in stats) == 5 * len(records)
        assert sum(s.ignored for s in stats) <= missing
    finally:
        for consumer in consumers:
            await consumer.stop()
        async with asyncio.timeout(HANG):
            await asyncio.gather(*runs)
        for store in replicas:
            await store.close()
    assert await broker.pending_count("results", "api") == 0
