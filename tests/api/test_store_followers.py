"""Many tasks joined to one: a join, and the leader's end, cost the same with 1 or N followers.

A follower reads through its leader; the leader only keeps their ids (to expire them with
it), and its end or discard works through them a bounded batch at a time. No timing is
asserted: what is held is the work done, counted in commands and keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator_api.model import TaskRecord, TaskStatus
from orchestrator_api.store import MemoryTaskStore, RedisTaskStore, TaskStore
from orchestrator_api.store import memory as memory_store
from orchestrator_api.store import redis as redis_store
from tests.api.test_store import TTL, new_record, started, submit, succeeded

KEY = "0123456789abcdef0123456789abcdef01234567"
BATCH = 4
FOLLOWERS = 10  # three batches of four: 4 + 4 + 2


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TaskStore]:
    """Each store, releasing followers ``BATCH`` at a time."""
    monkeypatch.setattr(memory_store, "FOLLOWER_BATCH", BATCH)
    monkeypatch.setattr(redis_store, "FOLLOWER_BATCH", BATCH)
    made: TaskStore
    if request.param == "memory":
        made = MemoryTaskStore(TTL)
    else:
        made = RedisTaskStore.from_url(request.getfixturevalue("redis_url"), ttl_seconds=TTL)
    yield made
    await made.close()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def join(store: TaskStore, n: int, idempotent: bool = False) -> list[TaskRecord]:
    followers = []
    for i in range(n):
        key = f"idem-{i}" if idempotent else None
        followers.append(await store.create(new_record(), key, KEY))
    return followers


async def commands(client: aioredis.Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (those in scripts included)."""
    stats: dict[str, Any] = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config|resetstat")
    }


async def test_every_follower_shows_its_leaders_result_after_batched_release(
    store: TaskStore,
) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    followers = await join(store, FOLLOWERS)

    await store.apply(succeeded(leader, 0, "Hello"))

    for follower in followers:
        done = await store.get("acme", follower.id)
        assert done is not None
        assert (done.status, done.joined, done.cached) == (TaskStatus.SUCCEEDED, leader.id, True)
        assert done.result is not None
        assert done.result.text == "Hello"


async def test_a_leader_looks_the_same_however_many_tasks_joined_it(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    await store.apply(started(leader))
    before = await store.get("acme", leader.id)

    await join(store, FOLLOWERS)

    assert await store.get("acme", leader.id) == before


async def test_discarding_a_leader_fails_every_follower_batch_by_batch(store: TaskStore) -> None:
    leader = await store.create(new_record(), cache_key=KEY)
    await store.apply(started(leader))  # a worker has it (its publish timed out, yet landed)
    followers = await join(store, FOLLOWERS)
    assert all(f.joined == leader.id for f in followers)

    await store.discard("acme", leader.id)

    for follower in followers:
        orphan = await store.get("acme", follower.id)
        assert orphan is not None
        assert orphan.status is TaskStatus.FAILED
        assert orphan.error is not None
        assert orphan.error.type == "unavailable"


async def test_memory_followers_expire_with_their_leader_batch_by_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_store, "FOLLOWER_BATCH", BATCH)
    now = [1000.0]
    store = MemoryTaskStore(60, safety_ttl_seconds=3600, clock=lambda: now[0])
    leader = await submit(store, new_record(), cache_key=KEY)
    followers = await join(store, FOLLOWERS)
    await store.apply(succeeded(leader, 0))

    now[0] += 59
    assert all([await store.get("acme", f.id) for f in followers])
    now[0] += 2
    assert [await store.get("acme", f.id) for f in followers] == [None] * FOLLOWERS
    later = await store.create(new_record())  # a write sweeps what expired
    assert list(store._entries) == [later.id]


@pytest.mark.redis
async def test_redis_a_join_runs_the_same_commands_however_many_joined_before(
    redis_url: str, admin: aioredis.Redis
) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL)
    try:
        await submit(store, new_record(), cache_key=KEY)
        await join(store, 1)

        await admin.config_resetstat()
        await join(store, 1)
        second = await commands(admin)
        await join(store, 200)
        await admin.config_resetstat()
        await join(store, 1)
        latest = await commands(admin)

        assert latest == second
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_the_leaders_record_does_not_grow_with_its_followers(
    redis_url: str, admin: aioredis.Redis
) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL)
    try:
        leader = await submit(store, new_record(), cache_key=KEY)
        await join(store, 1)
        record = f"orchestrator:task:{leader.id}"
        before = await admin.hgetall(record)

        await join(store, 200)

        assert await admin.hgetall(record) == before
        assert await admin.exists(f"{record}:log") == 0  # nothing logged per follower either
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_a_leaders_end_releases_its_followers_one_batch_per_script(
    redis_url: str, admin: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "FOLLOWER_BATCH", BATCH)
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL, safety_ttl_seconds=86400)
    try:
        leader = await submit(store, new_record(), cache_key=KEY)
        followers = await join(store, FOLLOWERS, idempotent=True)

        await admin.config_resetstat()
        assert await store.apply(succeeded(leader, 0)) is True

        # One APPLY, then one FOLLOWERS call per batch: 10 followers in batches of 4.
        assert (await commands(admin))["evalsha"] == 1 + 3
        assert await admin.exists(f"orchestrator:task:{leader.id}:fol") == 0
        for i, follower in enumerate(followers):
            for key in (f"orchestrator:task:{follower.id}", f"orchestrator:idem:acme:idem-{i}"):
                assert 0 < await admin.pttl(key) <= TTL * 1000, key
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_a_release_cut_short_resumes_on_the_redelivered_terminal_event(
    redis_url: str, admin: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL, safety_ttl_seconds=86400)
    try:
        leader = await submit(store, new_record(), cache_key=KEY)
        followers = await join(store, FOLLOWERS)
        ended = succeeded(leader, 0)

        async def died(*args: Any) -> None:  # the process died after the terminal event
            return None

        with monkeypatch.context() as patch:
            patch.setattr(store, "_followers", died)
            await store.apply(ended)
        follower_key = f"orchestrator:task:{followers[0].id}"
        assert await admin.pttl(follower_key) > TTL * 1000  # still its safety TTL

        assert await store.apply(ended) is True  # the redelivery finishes the release

        assert 0 < await admin.pttl(follower_key) <= TTL * 1000
        assert await admin.exists(f"orchestrator:task:{leader.id}:fol") == 0
        assert await store.apply(ended) is False  # and then it is a plain duplicate
    finally:
        await store.close()
