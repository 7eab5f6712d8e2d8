"""``TaskStore.requeue``: a replayed dead letter's task goes back to ``queued`` under its own
id, its attempts counting on; both stores pass this suite."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from orchestrator_api.model import TaskStatus
from orchestrator_api.store import MemoryTaskStore, RedisTaskStore, TaskStore
from tests.api.test_store import (
    delta,
    failed,
    new_record,
    started,
    submit,
    succeeded,
    summary,
)

HANG = 20.0
TTL = 60.0
SAFETY = 3600.0


@pytest.fixture
def store_options() -> dict[str, float]:
    return {"ttl_seconds": TTL, "safety_ttl_seconds": SAFETY}


async def test_a_failed_task_goes_back_to_queued_with_its_attempts(store: TaskStore) -> None:
    record = new_record(model="m-1", metadata={"k": 1}, trace_id="ab" * 16)
    await submit(store, record)
    for attempt in (1, 2):
        await store.apply(started(record, attempt))
    await store.apply(failed(record, 1, attempt=2))

    assert await store.requeue(record, 2) == 2

    again = await store.get("acme", record.id)
    assert again is not None
    assert again.status is TaskStatus.QUEUED
    assert (again.attempts, again.started_at, again.finished_at) == (2, None, None)
    assert (again.result, again.error) == (None, None)
    assert (again.model, again.metadata, again.trace_id) == ("m-1", {"k": 1}, "ab" * 16)
    assert summary(await store.events("acme", record.id)) == [
        ("status", ("queued", 0)),
        ("status", ("running", 1)),
        ("status", ("running", 2)),
        ("error", ("rate_limit", 2)),
        ("status", ("queued", 2)),
    ]


async def test_a_requeued_task_runs_again_as_its_next_attempt(store: TaskStore) -> None:
    record = new_record()
    await submit(store, record)
    await store.apply(failed(record, 0))
    await store.requeue(record, 1)

    assert await store.apply(delta(record, 1, "late", attempt=1)) is False  # attempt 1 is over
    assert await store.apply(started(record, 2)) is True
    assert await store.apply(succeeded(record, 1, "second time", attempt=2)) is True

    done = await store.get("acme", record.id)
    assert done is not None
    assert (done.status, done.attempts) == (TaskStatus.SUCCEEDED, 2)
    assert done.result is not None
    assert done.result.text == "second time"
    events = summary(await store.events("acme", record.id))
    assert events[-3:] == [
        ("status", ("queued", 1)),
        ("status", ("running", 2)),
        ("result", ("second time", 2)),
    ]


async def test_a_reader_following_the_task_sees_it_queued_again(store: TaskStore) -> None:
    record = new_record()
    await submit(store, record)
    await store.apply(started(record))
    seen = await store.events("acme", record.id)

    waiting = asyncio.create_task(store.events("acme", record.id, after=seen[-1].id, timeout=HANG))
    await asyncio.sleep(0.05)
    await store.requeue(record, 1)  # a broker dead letter: no terminal event came

    async with asyncio.timeout(HANG):
        assert summary(await waiting) == [("status", ("queued", 1))]


async def test_an_expired_task_is_recreated_from_the_record(store: TaskStore) -> None:
    record = new_record(model="m-1", created_at=time.time() - 3600, trace_id="cd" * 16)

    assert await store.requeue(record, 5) == 5

    again = await store.get("acme", record.id)
    assert again is not None
    assert (again.status, again.attempts, again.model) == (TaskStatus.QUEUED, 5, "m-1")
    assert again.created_at == pytest.approx(record.created_at)
    assert again.trace_id == "cd" * 16
    assert summary(await store.events("acme", record.id)) == [
        ("status", ("queued", 0)),
        ("status", ("queued", 5)),
    ]
    assert await store.apply(started(record, 6)) is True


async def test_requeuing_again_with_the_same_count_changes_nothing(store: TaskStore) -> None:
    record = new_record()
    await submit(store, record)
    await store.apply(failed(record, 0))

    assert await store.requeue(record, 1) == 1
    before = await store.events("acme", record.id)
    assert await store.requeue(record, 1) == 1

    assert await store.events("acme", record.id) == before


async def test_the_record_s_own_count_wins_when_it_counted_more(store: TaskStore) -> None:
    record = new_record()
    await submit(store, record)
    await store.apply(failed(record, 0, attempt=4))

    assert await store.requeue(record, 2) == 4
    assert await store.apply(started(record, 3)) is False
    assert await store.apply(started(record, 5)) is True


async def test_another_tenants_task_is_left_alone(store: TaskStore) -> None:
    record = new_record("acme")
    await submit(store, record)
    await store.apply(failed(record, 0))

    with pytest.raises(ValueError, match="another tenant"):
        await store.requeue(new_record("globex", id=record.id), 1)

    unchanged = await store.get("acme", record.id)
    assert unchanged is not None
    assert unchanged.status is TaskStatus.FAILED


async def test_a_requeued_task_is_listed_as_of_its_replay(store: TaskStore) -> None:
    old = new_record(created_at=time.time() - 60)
    newer = new_record(created_at=time.time() - 30)
    await submit(store, old)
    await submit(store, newer)
    await store.apply(failed(old, 0))

    await store.requeue(old, 1)

    listed = await store.list_tasks("acme", limit=10)
    assert [r.id for r in listed.records] == [old.id, newer.id]
    assert listed.records[0].status is TaskStatus.QUEUED


async def test_a_memory_requeued_task_lives_like_a_new_one() -> None:
    now = [1000.0]
    store = MemoryTaskStore(60, safety_ttl_seconds=3600, clock=lambda: now[0])
    record = new_record()
    await submit(store, record)
    await store.apply(failed(record, 0))
    await store.requeue(record, 1)

    now[0] += 600  # past the TTL of the failure: no longer the expiry
    assert await store.get("acme", record.id) is not None
    now[0] += 3000
    assert await store.get("acme", record.id) is None


@pytest.mark.redis
async def test_redis_keys_of_a_requeued_task_expire_like_a_new_task_s(redis_url: str) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL, safety_ttl_seconds=SAFETY)
    client = aioredis.Redis.from_url(redis_url)
    try:
        record = new_record()
        await submit(store, record, "key-1")
        await store.apply(failed(record, 0))

        await store.requeue(record, 1)

        keys = [f"orchestrator:task:{record.id}{suffix}" for suffix in ("", ":log")]
        for key in [*keys, "orchestrator:idem:acme:key-1"]:
            assert TTL * 1000 < await client.pttl(key) <= SAFETY * 1000, key
    finally:
        await client.aclose()
        await store.close()
