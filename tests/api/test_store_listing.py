"""Listing a tenant's tasks (``TaskStore.list_tasks``): both stores pass this suite, and each
store's per-tenant index goes with the tasks it names."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator_api.model import TaskRecord, TaskStatus
from orchestrator_api.store import MemoryTaskStore, RedisTaskStore, TaskStore, UnknownCursor
from tests.api.test_store import failed, new_record, started, submit, succeeded

HANG = 20.0
TTL = 60.0
KEY = "c" * 40


async def created(store: TaskStore, count: int, tenant: str = "acme") -> list[TaskRecord]:
    """``count`` tasks of ``tenant`` created a millisecond apart, oldest first."""
    base = time.time()
    records = [new_record(tenant, created_at=base + n / 1000) for n in range(count)]
    for record in records:
        await store.create(record)
    return records


def ids(records: Any) -> list[str]:
    return [record.id for record in records]


async def test_tasks_are_listed_newest_first(store: TaskStore) -> None:
    records = await created(store, 3)

    page = await store.list_tasks("acme", limit=10)

    assert ids(page.records) == ids(reversed(records))
    assert page.has_more is False


async def test_each_listed_task_is_shown_as_get_shows_it(store: TaskStore) -> None:
    (record,) = await created(store, 1)
    await store.apply(started(record))
    await store.apply(succeeded(record, 1, "the answer"))

    (listed,) = (await store.list_tasks("acme", limit=1)).records

    assert listed == await store.get("acme", record.id)
    assert listed.status is TaskStatus.SUCCEEDED
    assert listed.result is not None
    assert listed.result.text == "the answer"


async def test_pages_follow_one_another_through_after(store: TaskStore) -> None:
    records = await created(store, 7)

    pages, after, more = [], None, True
    while more:
        page = await store.list_tasks("acme", limit=3, after=after)
        pages.append(ids(page.records))
        after, more = page.records[-1].id, page.has_more

    newest_first = ids(reversed(records))
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]


async def test_a_full_last_page_says_there_is_no_more(store: TaskStore) -> None:
    records = await created(store, 4)

    first = await store.list_tasks("acme", limit=2)
    last = await store.list_tasks("acme", limit=2, after=first.records[-1].id)

    assert first.has_more is True
    assert ids(last.records) == ids(reversed(records[:2]))
    assert last.has_more is False


async def test_tasks_created_at_the_same_time_are_ordered_by_id(store: TaskStore) -> None:
    at = time.time()
    records = [new_record(created_at=at) for _ in range(5)]
    for record in records:
        await store.create(record)

    first = await store.list_tasks("acme", limit=2)
    rest = await store.list_tasks("acme", limit=10, after=first.records[-1].id)

    expected = sorted(ids(records), reverse=True)
    assert ids(first.records) + ids(rest.records) == expected


async def test_the_status_filter_lists_only_that_status(store: TaskStore) -> None:
    queued, running, done, broken = await created(store, 4)
    await store.apply(started(running))
    await store.apply(succeeded(done, 0))
    await store.apply(failed(broken, 0))

    async def listed(status: TaskStatus) -> list[str]:
        return ids((await store.list_tasks("acme", limit=10, status=status)).records)

    assert await listed(TaskStatus.QUEUED) == [queued.id]
    assert await listed(TaskStatus.RUNNING) == [running.id]
    assert await listed(TaskStatus.SUCCEEDED) == [done.id]
    assert await listed(TaskStatus.FAILED) == [broken.id]


async def test_the_status_filter_pages_past_many_others(store: TaskStore) -> None:
    records = await created(store, 250)
    wanted = [records[3], records[120], records[200]]
    for record in wanted:
        await store.apply(failed(record, 0))

    first = await store.list_tasks("acme", limit=2, status=TaskStatus.FAILED)
    rest = await store.list_tasks(
        "acme", limit=2, status=TaskStatus.FAILED, after=first.records[-1].id
    )

    assert ids(first.records) == [records[200].id, records[120].id]
    assert first.has_more is True
    assert ids(rest.records) == [records[3].id]
    assert rest.has_more is False


async def test_another_tenants_tasks_are_never_listed(store: TaskStore) -> None:
    (mine,) = await created(store, 1, "acme")
    (theirs,) = await created(store, 1, "globex")

    assert ids((await store.list_tasks("acme", limit=10)).records) == [mine.id]
    assert ids((await store.list_tasks("globex", limit=10)).records) == [theirs.id]
    assert (await store.list_tasks("initech", limit=10)).records == ()


async def test_a_cursor_naming_another_tenants_task_is_refused(store: TaskStore) -> None:
    await created(store, 1, "acme")
    (theirs,) = await created(store, 1, "globex")

    with pytest.raises(UnknownCursor):
        await store.list_tasks("acme", limit=10, after=theirs.id)


async def test_an_unknown_cursor_is_refused(store: TaskStore) -> None:
    await created(store, 1)

    with pytest.raises(UnknownCursor):
        await store.list_tasks("acme", limit=10, after="f" * 32)


async def test_a_discarded_task_is_not_listed(store: TaskStore) -> None:
    kept, dropped = await created(store, 2)

    await store.discard("acme", dropped.id)

    assert ids((await store.list_tasks("acme", limit=10)).records) == [kept.id]


async def test_shared_answers_are_listed_as_their_tasks_show_them(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)
    await store.apply(started(leader))

    listed = {r.id: r for r in (await store.list_tasks("acme", limit=10)).records}

    assert set(listed) == {leader.id, follower.id}
    assert listed[follower.id].joined == leader.id
    assert listed[follower.id].status is TaskStatus.RUNNING  # the leader's


async def test_an_idempotent_replay_lists_the_task_once(store: TaskStore) -> None:
    first = await submit(store, new_record(), "key-1")
    await store.create(new_record(), "key-1")

    assert ids((await store.list_tasks("acme", limit=10)).records) == [first.id]


# -- the index goes with the tasks ----------------------------------------------------------


async def test_the_memory_index_forgets_a_task_when_it_expires() -> None:
    now = [1000.0]
    store = MemoryTaskStore(60, safety_ttl_seconds=3600, clock=lambda: now[0])
    gone, kept = new_record(), new_record()
    await store.create(gone)
    await store.apply(succeeded(gone, 0))
    now[0] += 30
    await store.create(kept)

    now[0] += 31  # past the TTL of the first, which ended
    listed = await store.list_tasks("acme", limit=10)

    assert ids(listed.records) == [kept.id]
    assert store._index == {"acme": {kept.id: kept.created_at}}
    now[0] += 3600
    await store.list_tasks("acme", limit=10)
    assert store._index == {}  # no tenant left behind


@pytest.mark.redis
async def test_the_redis_index_expires_with_the_last_task(redis_url: str) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL, safety_ttl_seconds=3600)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await created(store, 2)
        index = "orchestrator:tenant:acme:tasks"
        assert await client.zcard(index) == 2
        # Its own TTL: the longest one of its tasks can live (safety TTL, then the TTL).
        assert 3600_000 < await client.pttl(index) <= (3600 + TTL) * 1000
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.redis
async def test_the_redis_index_drops_ids_past_any_task_s_lifetime_on_write(
    redis_url: str,
) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL, safety_ttl_seconds=3600)
    client = aioredis.Redis.from_url(redis_url)
    try:
        index = "orchestrator:tenant:acme:tasks"
        now = time.time()
        ancient = "a" * 32  # an id whose task cannot be alive any more
        await client.zadd(index, {ancient: now - 3600 - TTL - 1, "b" * 32: now - 3600})
        record = new_record(created_at=now)

        await store.create(record)

        assert await client.zscore(index, ancient) is None
        assert await client.zscore(index, "b" * 32) is not None
        assert await client.zscore(index, record.id) == pytest.approx(now)
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.redis
async def test_a_redis_listing_removes_the_ids_of_expired_tasks(redis_url: str) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL)
    client = aioredis.Redis.from_url(redis_url)
    try:
        gone, kept = await created(store, 2)
        await client.delete(f"orchestrator:task:{gone.id}")  # as its TTL would

        listed = await store.list_tasks("acme", limit=10)

        assert ids(listed.records) == [kept.id]
        assert await client.zrange("orchestrator:tenant:acme:tasks", 0, -1) == [kept.id.encode()]
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.redis
async def test_an_index_id_costs_the_documented_memory(redis_url: str) -> None:
    """store/redis.py documents about 140 bytes per id in a large set."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        index = "orchestrator:tenant:acme:tasks"
        base = time.time()
        members = {os.urandom(16).hex(): base + n / 1000 for n in range(10_000)}
        await client.zadd(index, members)
        used = await client.memory_usage(index, samples=0)
        assert used is not None
        assert 100 <= used / 10_000 <= 200
    finally:
        await client.aclose()
