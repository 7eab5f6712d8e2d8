"""The prompt cache and joined tasks in the TaskStore contract: both stores pass this suite.

A task created with a cache key leads it (runs), follows the identical task in flight
(``joined``), or is answered from the cache (``cached``); see ``store/_sharing.py``.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from orchestrator_api.model import TaskStatus
from orchestrator_api.store import IdempotencyKeyReused, MemoryTaskStore, RedisTaskStore, TaskStore
from tests.api.conftest import PENDING
from tests.api.test_store import (
    HANG,
    TTL,
    delta,
    failed,
    new_record,
    started,
    submit,
    succeeded,
    summary,
)

KEY = "0123456789abcdef0123456789abcdef01234567"
OTHER_KEY = "f" * 40


async def test_the_first_task_with_a_key_leads_it(store: TaskStore) -> None:
    record = new_record()

    stored = await submit(store, record, cache_key=KEY)

    assert stored == record
    assert (stored.cached, stored.joined) == (False, None)


async def test_an_identical_task_in_flight_is_joined(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)

    follower = await submit(store, new_record(metadata={"mine": 1}), cache_key=KEY)

    assert follower.id != leader.id
    assert follower.joined == leader.id
    assert follower.status is TaskStatus.QUEUED
    assert follower.metadata == {"mine": 1}
    assert follower.cached is False
    assert await store.get("acme", follower.id) == follower


async def test_a_task_without_deltas_joins_a_leader_that_streams(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)

    quiet = await submit(store, new_record(), cache_key=KEY, deltas=False)

    assert quiet.joined == leader.id


async def test_a_streaming_task_does_not_follow_a_leader_without_deltas(
    store: TaskStore,
) -> None:
    quiet = await submit(store, new_record(), cache_key=KEY, deltas=False)
    assert (await submit(store, new_record(), cache_key=KEY, deltas=False)).joined == quiet.id

    streaming = await submit(store, new_record(), cache_key=KEY)
    # It runs, and leads in the quiet one's place: the next submissions follow it.
    assert streaming.joined is None
    assert (await submit(store, new_record(), cache_key=KEY)).joined == streaming.id
    assert (await submit(store, new_record(), cache_key=KEY, deltas=False)).joined == streaming.id

    # The quiet leader runs on for its followers; its end does not end the new lead.
    await store.apply(failed(quiet, 0))
    assert (await submit(store, new_record(), cache_key=KEY)).joined == streaming.id


async def test_a_follower_shows_its_leaders_progress_and_result(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)

    await store.apply(started(leader))
    running = await store.get("acme", follower.id)
    assert running is not None
    assert (running.status, running.attempts) == (TaskStatus.RUNNING, 1)
    assert running.started_at is not None
    assert running.started_at >= follower.created_at

    await store.apply(delta(leader, 1, "Hel"))
    await store.apply(succeeded(leader, 2, "Hello"))

    done = await store.get("acme", follower.id)
    assert done is not None
    assert done.id == follower.id
    assert done.created_at == follower.created_at
    assert done.status is TaskStatus.SUCCEEDED
    assert done.cached is True
    assert done.joined == leader.id
    assert done.result is not None
    assert done.result.text == "Hello"
    assert done.result.cost_usd == 0.0  # the leader paid
    leader_done = await store.get("acme", leader.id)
    assert leader_done is not None
    assert leader_done.result is not None
    assert leader_done.result.cost_usd == 0.0042
    assert leader_done.cached is False


async def test_a_follower_streams_its_leaders_events(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)
    await store.apply(started(leader))
    await store.apply(delta(leader, 1, "Hel"))
    await store.apply(succeeded(leader, 2, "Hello"))

    mine = await store.events("acme", follower.id)
    theirs = await store.events("acme", leader.id)

    assert summary(mine) == summary(theirs)
    assert [e.id for e in mine] == [e.id for e in theirs]
    assert mine[-1].data["cost_usd"] == 0.0
    assert theirs[-1].data["cost_usd"] == 0.0042
    assert await store.events("acme", follower.id, after=mine[-2].id) == mine[-1:]


async def test_a_waiting_follower_wakes_on_its_leaders_event(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)

    waiting = asyncio.create_task(store.events("acme", follower.id, after="1", timeout=HANG))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await store.apply(started(leader))

    async with asyncio.timeout(HANG):
        assert summary(await waiting) == [("status", ("running", 1))]


async def test_a_success_is_served_from_the_cache_afterwards(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    await store.apply(started(leader))
    await store.apply(succeeded(leader, 1, "Hello"))

    hit = await submit(store, new_record(metadata={"again": True}), cache_key=KEY)

    assert hit.status is TaskStatus.SUCCEEDED
    assert (hit.cached, hit.joined, hit.attempts) == (True, None, 0)
    assert hit.metadata == {"again": True}
    assert hit.result is not None
    assert (hit.result.text, hit.result.provider, hit.result.cost_usd) == ("Hello", "fake", 0.0)
    assert hit.started_at == hit.finished_at == hit.created_at
    assert await store.get("acme", hit.id) == hit
    events = await store.events("acme", hit.id)
    assert summary(events) == [("status", ("queued", 0)), ("result", ("Hello", 0))]
    assert events[-1].data["cost_usd"] == 0.0
    # A finished task's stream does not wait.
    async with asyncio.timeout(HANG / 2):
        assert await store.events("acme", hit.id, after=events[-1].id, timeout=HANG) == []


async def test_the_cache_is_per_key_and_per_tenant(store: TaskStore) -> None:
    leader = await submit(store, new_record("acme"), cache_key=KEY)
    other_tenant = await submit(store, new_record("globex"), cache_key=KEY)
    other_key = await submit(store, new_record("acme"), cache_key=OTHER_KEY)
    assert (other_tenant.joined, other_key.joined) == (None, None)

    await store.apply(succeeded(leader, 0, "acme's answer"))

    assert (await submit(store, new_record("globex"), cache_key=KEY)).joined == other_tenant.id
    assert (await submit(store, new_record("acme"), cache_key=KEY)).cached is True


async def test_a_task_without_a_key_neither_joins_nor_is_served_from_the_cache(
    store: TaskStore,
) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    plain = await submit(store, new_record())
    assert plain.joined is None

    await store.apply(succeeded(leader, 0))
    plain = await submit(store, new_record())
    assert (plain.status, plain.cached) == (TaskStatus.QUEUED, False)


async def test_a_task_run_without_a_key_fills_no_cache(store: TaskStore) -> None:
    plain = await submit(store, new_record())
    await store.apply(succeeded(plain, 0))

    assert (await submit(store, new_record(), cache_key=KEY)).cached is False


async def test_a_failure_is_not_cached_and_its_followers_fail_with_it(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)

    await store.apply(failed(leader, 0))

    done = await store.get("acme", follower.id)
    assert done is not None
    assert done.status is TaskStatus.FAILED
    assert done.error is not None
    assert done.error.type == "rate_limit"
    assert done.cached is False
    assert summary(await store.events("acme", follower.id))[-1] == ("error", ("rate_limit", 1))
    again = await submit(store, new_record(), cache_key=KEY)
    assert (again.status, again.cached, again.joined) == (TaskStatus.QUEUED, False, None)


async def test_discarding_a_leader_fails_its_followers_and_frees_the_key(
    store: TaskStore,
) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)
    waiting = asyncio.create_task(store.events("acme", follower.id, after="1", timeout=HANG))
    await asyncio.sleep(0.1)

    await store.discard("acme", leader.id)

    assert await store.get("acme", leader.id) is None
    orphan = await store.get("acme", follower.id)
    assert orphan is not None
    assert orphan.status is TaskStatus.FAILED
    assert orphan.error is not None
    assert orphan.error.type == "unavailable"
    async with asyncio.timeout(HANG):
        assert summary(await waiting) == [("error", ("unavailable", 0))]
    assert summary(await store.events("acme", follower.id)) == [
        ("status", ("queued", 0)),
        ("error", ("unavailable", 0)),
    ]
    again = await submit(store, new_record(), cache_key=KEY)
    assert (again.status, again.joined) == (TaskStatus.QUEUED, None)


async def test_the_idempotency_key_is_checked_before_the_cache(store: TaskStore) -> None:
    first = await submit(store, new_record(), "idem-1", KEY)
    await store.apply(succeeded(first, 0))

    replay = await submit(store, new_record(), "idem-1", KEY)

    assert replay.id == first.id
    assert replay.cached is False


async def test_an_idempotent_replay_of_a_follower_shows_the_follower(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), "idem-1", KEY)
    await store.apply(started(leader))

    replay = await submit(store, new_record(), "idem-1", KEY)

    assert replay.id == follower.id
    assert replay.joined == leader.id
    assert replay.status is TaskStatus.RUNNING


async def test_memory_cache_expires_ttl_after_the_success() -> None:
    now = [1000.0]
    store = MemoryTaskStore(60, safety_ttl_seconds=3600, clock=lambda: now[0])
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)
    now[0] += 600  # a long run: the cache TTL counts from the end
    await store.apply(succeeded(leader, 0))

    now[0] += 59
    assert (await submit(store, new_record(), cache_key=KEY)).cached is True
    assert await store.get("acme", follower.id) is not None
    now[0] += 2
    assert await store.get("acme", follower.id) is None  # expires with its leader
    fresh = await submit(store, new_record(), cache_key=KEY)
    assert (fresh.cached, fresh.joined) == (False, None)
    assert store._cache.keys() == set()  # swept


@pytest.mark.redis
async def test_redis_cache_keys_expire_with_the_ttl(redis_url: str) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL, safety_ttl_seconds=86400)
    client = aioredis.Redis.from_url(redis_url)
    cache = f"orchestrator:cache:acme:{KEY}"
    try:
        leader = await submit(store, new_record(), "idem-f", KEY)
        follower = await submit(store, new_record(), "idem-g", KEY)
        assert TTL * 1000 < await client.pttl(cache + ":lead") <= 86400 * 1000
        assert await client.exists(cache) == 0

        await store.apply(succeeded(leader, 0))

        assert await client.exists(cache + ":lead") == 0
        assert await client.exists(f"orchestrator:task:{leader.id}:fol") == 0
        for key in (
            cache,
            f"orchestrator:task:{follower.id}",
            "orchestrator:idem:acme:idem-g",
        ):
            assert 0 < await client.pttl(key) <= TTL * 1000, key
        hit = await submit(store, new_record(), cache_key=KEY)
        assert hit.cached is True
        for suffix in ("", ":log"):
            assert 0 < await client.pttl(f"orchestrator:task:{hit.id}{suffix}") <= TTL * 1000
        # The prompt is nowhere in the key space (only digests are).
        keys = [k.decode() async for k in client.scan_iter("orchestrator:cache:*")]
        assert sorted(keys) == [cache]
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.redis
async def test_redis_create_repeated_by_a_retry_keeps_its_first_outcome(redis_url: str) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL)
    try:
        leader = new_record()
        assert await store.create(leader, cache_key=KEY) == leader
        assert await store.create(leader, cache_key=KEY) == leader  # not its own follower
        await store.confirm("acme", leader.id)
        follower = new_record()
        first = await store.create(follower, cache_key=KEY)
        assert await store.create(follower, cache_key=KEY) == first
        assert first.joined == leader.id
    finally:
        await store.close()


# -- a leader not confirmed published yet -----------------------------------------------------


async def test_a_leader_not_confirmed_yet_is_not_joined(store: TaskStore) -> None:
    leader = await store.create(new_record(), cache_key=KEY)  # its publish is under way

    alone = await submit(store, new_record(), cache_key=KEY)

    assert (alone.joined, alone.cached, alone.status) == (None, False, TaskStatus.QUEUED)
    await store.confirm("acme", leader.id)
    follower = await submit(store, new_record(), cache_key=KEY)
    assert follower.joined == leader.id  # the leader kept the key; the lone task never led


async def test_a_leader_whose_first_event_arrived_is_joined_without_a_confirm(
    store: TaskStore,
) -> None:
    leader = await store.create(new_record(), cache_key=KEY)  # its confirm was lost
    await store.apply(started(leader))

    follower = await submit(store, new_record(), cache_key=KEY)

    assert follower.joined == leader.id
    assert follower.status is TaskStatus.RUNNING


async def test_an_abandoned_leader_loses_the_key_to_the_next_task(
    quick_store: TaskStore,
) -> None:
    abandoned = await quick_store.create(new_record(), cache_key=KEY)
    await asyncio.sleep(PENDING * 2)

    leader = await submit(quick_store, new_record(), cache_key=KEY)
    follower = await submit(quick_store, new_record(), cache_key=KEY)

    assert leader.joined is None
    assert follower.joined == leader.id != abandoned.id
    await quick_store.apply(succeeded(leader, 0, "fresh"))
    hit = await submit(quick_store, new_record(), cache_key=KEY)
    assert hit.cached is True
    assert hit.result is not None
    assert hit.result.text == "fresh"


async def test_a_follower_and_a_hit_are_never_pending(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await store.create(new_record(), "idem-f", KEY)
    await store.apply(succeeded(leader, 0))
    hit = await store.create(new_record(), "idem-h", KEY)

    # Neither is published, so neither is confirmed: their keys answer at once.
    assert (await store.create(new_record(), "idem-f", KEY)).id == follower.id
    assert (await store.create(new_record(), "idem-h", KEY)).id == hit.id


async def test_a_shared_tasks_key_is_checked_against_its_fingerprint(store: TaskStore) -> None:
    leader = await submit(store, new_record(), "idem-l", KEY, "request-a")
    follower = await store.create(new_record(), "idem-f", KEY, "request-a")
    await store.apply(succeeded(leader, 0))
    hit = await store.create(new_record(), "idem-h", KEY, "request-a")

    for key, task in (("idem-l", leader), ("idem-f", follower), ("idem-h", hit)):
        assert (await store.create(new_record(), key, KEY, "request-a")).id == task.id
        with pytest.raises(IdempotencyKeyReused):
            await store.create(new_record(), key, KEY, "request-b")
