"""The TaskStore contract: the memory and Redis stores pass this one suite.

Timeouts here only guard against hangs; they are never asserted as upper bounds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator_api.model import StoredEvent, TaskRecord, TaskStatus
from orchestrator_api.store import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    MemoryTaskStore,
    RedisTaskStore,
    StoreUnavailable,
    TaskStore,
)
from orchestrator_tasks.messages import ErrorInfo, EventKind, ResultEvent, Usage
from tests.api.conftest import PENDING

HANG = 20.0
TTL = 60.0


def new_record(tenant: str = "acme", **changes: Any) -> TaskRecord:
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "status": TaskStatus.QUEUED,
        "created_at": time.time(),
        **changes,
    }
    return TaskRecord(tenant=tenant, **fields)


def event(
    record: TaskRecord, kind: EventKind, *, attempt: int = 1, seq: int = 0, **fields: Any
) -> ResultEvent:
    return ResultEvent(
        task_id=record.id,
        tenant=record.tenant,
        kind=kind,
        attempt=attempt,
        seq=seq,
        at=1_700_000_000.123456 + attempt * 10 + seq,
        **fields,
    )


def started(record: TaskRecord, attempt: int = 1) -> ResultEvent:
    return event(record, EventKind.STARTED, attempt=attempt, seq=0)


def delta(record: TaskRecord, seq: int, text: str, attempt: int = 1) -> ResultEvent:
    return event(record, EventKind.DELTA, attempt=attempt, seq=seq, text=text)


def succeeded(record: TaskRecord, seq: int, text: str = "done", attempt: int = 1) -> ResultEvent:
    return event(
        record,
        EventKind.SUCCEEDED,
        attempt=attempt,
        seq=seq,
        text=text,
        provider="fake",
        model="m-1",
        usage=Usage(input_tokens=3, output_tokens=5),
        finish_reason="stop",
        cost_usd=0.0042,
    )


def failed(record: TaskRecord, seq: int, attempt: int = 1) -> ResultEvent:
    return event(
        record,
        EventKind.FAILED,
        attempt=attempt,
        seq=seq,
        error=ErrorInfo(type="rate_limit", message="slow down"),
    )


async def submit(
    store: TaskStore,
    record: TaskRecord,
    idempotency_key: str | None = None,
    cache_key: str | None = None,
    fingerprint: str | None = None,
    *,
    deltas: bool = True,
) -> TaskRecord:
    """``create``, then ``confirm`` a task stored to be published, as ``TaskService`` does
    once its publish succeeded."""
    stored = await store.create(record, idempotency_key, cache_key, fingerprint, deltas=deltas)
    if stored.id == record.id and not stored.cached and stored.joined is None:
        await store.confirm(record.tenant, record.id)
    return stored


def summary(events: list[StoredEvent]) -> list[tuple[str, Any]]:
    """(event, the part of data that identifies it) for readable assertions."""
    shown = []
    for stored in events:
        data = stored.data
        if stored.event == "status":
            shown.append(("status", (data["status"], data["attempt"])))
        elif stored.event == "delta":
            shown.append(("delta", (data["text"], data["attempt"])))
        elif stored.event == "result":
            shown.append(("result", (data["text"], data["attempt"])))
        elif stored.event == "cancelled":
            shown.append(("cancelled", (data["partial_text"], data["attempt"])))
        else:
            shown.append(("error", (data["type"], data["attempt"])))
    return shown


# -- records ----------------------------------------------------------------------------------


async def test_create_then_get_returns_the_record(store: TaskStore) -> None:
    record = new_record(model="m-1", metadata={"k": [1, {}]}, trace_id="ab" * 16)

    assert await store.create(record) == record
    assert await store.get("acme", record.id) == record


async def test_get_of_an_unknown_task_is_none(store: TaskStore) -> None:
    assert await store.get("acme", "nope") is None


async def test_idempotency_key_returns_the_first_record(store: TaskStore) -> None:
    first, second = new_record(), new_record()

    assert (await submit(store, first, "key-1")).id == first.id
    assert (await store.create(second, "key-1")).id == first.id
    assert await store.get("acme", second.id) is None


async def test_idempotency_keys_are_per_tenant(store: TaskStore) -> None:
    mine, theirs = new_record("acme"), new_record("other")

    await store.create(mine, "key-1")
    assert (await store.create(theirs, "key-1")).id == theirs.id


async def test_idempotent_create_returns_the_current_state(store: TaskStore) -> None:
    first = new_record()
    await submit(store, first, "key-1")
    await store.apply(started(first))

    again = await store.create(new_record(), "key-1")

    assert again.id == first.id
    assert again.status is TaskStatus.RUNNING


async def test_another_tenants_task_looks_unknown(store: TaskStore) -> None:
    record = new_record("acme")
    await store.create(record)

    assert await store.get("other", record.id) is None
    assert await store.events("other", record.id) == []
    await store.discard("other", record.id)
    assert await store.get("acme", record.id) == record


async def test_discard_removes_the_record_and_frees_its_idempotency_key(store: TaskStore) -> None:
    record = new_record()
    await store.create(record, "key-1")

    await store.discard("acme", record.id)

    assert await store.get("acme", record.id) is None
    replacement = new_record()
    assert (await store.create(replacement, "key-1")).id == replacement.id


async def test_a_new_record_must_be_queued(store: TaskStore) -> None:
    with pytest.raises(ValueError, match="queued"):
        await store.create(new_record(status=TaskStatus.RUNNING))


# -- applying events --------------------------------------------------------------------------


async def test_a_task_runs_to_success(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    for result_event in (
        started(record),
        delta(record, 1, "Hel"),
        delta(record, 2, "lo"),
        succeeded(record, 3, "Hello"),
    ):
        assert await store.apply(result_event) is True

    events = await store.events("acme", record.id)
    assert summary(events) == [
        ("status", ("queued", 0)),
        ("status", ("running", 1)),
        ("delta", ("Hel", 1)),
        ("delta", ("lo", 1)),
        ("result", ("Hello", 1)),
    ]
    assert events[-1].data == {
        "text": "Hello",
        "usage": {"input_tokens": 3, "output_tokens": 5},
        "provider": "fake",
        "model": "m-1",
        "finish_reason": "stop",
        "cost_usd": 0.0042,
        "attempt": 1,
    }
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids))
    done = await store.get("acme", record.id)
    assert done is not None
    assert done.status is TaskStatus.SUCCEEDED
    assert done.attempts == 1
    assert done.started_at == started(record).at
    assert done.finished_at == succeeded(record, 3).at
    assert done.result is not None
    assert done.result.text == "Hello"
    assert done.result.usage == Usage(input_tokens=3, output_tokens=5)
    assert (done.result.provider, done.result.model, done.result.finish_reason) == (
        "fake",
        "m-1",
        "stop",
    )
    assert done.result.cost_usd == 0.0042
    assert done.error is None


async def test_a_task_fails_with_its_error(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(started(record))
    await store.apply(failed(record, 1))

    events = await store.events("acme", record.id)
    assert events[-1].event == "error"
    assert events[-1].data == {"type": "rate_limit", "message": "slow down", "attempt": 1}
    done = await store.get("acme", record.id)
    assert done is not None
    assert done.status is TaskStatus.FAILED
    assert done.error == ErrorInfo(type="rate_limit", message="slow down")
    assert done.result is None


async def test_events_after_an_id_resume_exactly_there(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(started(record))
    for seq in range(1, 6):
        await store.apply(delta(record, seq, f"t{seq}"))
    everything = await store.events("acme", record.id)

    for cut in range(len(everything)):
        rest = await store.events("acme", record.id, after=everything[cut].id)
        assert rest == everything[cut + 1 :]


async def test_an_unparsable_last_event_id_replays_everything(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)

    assert summary(await store.events("acme", record.id, after="garbage")) == [
        ("status", ("queued", 0))
    ]


async def test_a_redelivered_event_is_applied_once(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(started(record))
    assert await store.apply(delta(record, 1, "a")) is True

    assert await store.apply(delta(record, 1, "a")) is False
    assert await store.apply(started(record)) is False

    assert summary(await store.events("acme", record.id))[1:] == [
        ("status", ("running", 1)),
        ("delta", ("a", 1)),
    ]


async def test_an_event_that_overtook_its_predecessor_waits_for_it(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(started(record))

    assert await store.apply(delta(record, 3, "c")) is True
    assert await store.apply(delta(record, 2, "b")) is True
    assert summary(await store.events("acme", record.id))[-1] == ("status", ("running", 1))
    assert await store.apply(delta(record, 2, "b")) is False  # buffered already

    assert await store.apply(delta(record, 1, "a")) is True
    assert summary(await store.events("acme", record.id))[2:] == [
        ("delta", ("a", 1)),
        ("delta", ("b", 1)),
        ("delta", ("c", 1)),
    ]
    assert await store.apply(succeeded(record, 4, "abc")) is True
    assert summary(await store.events("acme", record.id))[-1] == ("result", ("abc", 1))


async def test_a_terminal_event_is_applied_even_before_a_missing_delta(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(started(record))
    await store.apply(delta(record, 2, "b"))

    assert await store.apply(succeeded(record, 3, "ab")) is True
    assert await store.apply(delta(record, 1, "a")) is False

    assert summary(await store.events("acme", record.id))[1:] == [
        ("status", ("running", 1)),
        ("result", ("ab", 1)),
    ]


async def test_a_retry_supersedes_the_earlier_attempt(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(started(record, attempt=1))
    await store.apply(delta(record, 1, "old", attempt=1))

    assert await store.apply(started(record, attempt=2)) is True
    assert await store.apply(delta(record, 2, "late", attempt=1)) is False
    assert await store.apply(succeeded(record, 3, "stale", attempt=1)) is False
    assert await store.apply(delta(record, 1, "new", attempt=2)) is True
    assert await store.apply(succeeded(record, 2, "new", attempt=2)) is True

    assert summary(await store.events("acme", record.id))[1:] == [
        ("status", ("running", 1)),
        ("delta", ("old", 1)),
        ("status", ("running", 2)),
        ("delta", ("new", 2)),
        ("result", ("new", 2)),
    ]
    done = await store.get("acme", record.id)
    assert done is not None
    assert done.attempts == 2
    assert done.started_at == started(record, attempt=1).at


async def test_events_of_a_newer_attempt_switch_even_before_its_start(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(started(record, attempt=1))

    assert await store.apply(delta(record, 1, "x", attempt=2)) is True  # buffered
    assert await store.apply(started(record, attempt=2)) is True

    assert summary(await store.events("acme", record.id))[-2:] == [
        ("status", ("running", 2)),
        ("delta", ("x", 2)),
    ]


async def test_the_terminal_result_is_written_once(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(started(record))
    assert await store.apply(succeeded(record, 1, "first")) is True

    assert await store.apply(succeeded(record, 1, "first")) is False
    assert await store.apply(failed(record, 2)) is False
    assert await store.apply(started(record, attempt=2)) is False
    assert await store.apply(succeeded(record, 1, "second", attempt=2)) is False

    done = await store.get("acme", record.id)
    assert done is not None
    assert done.result is not None
    assert done.result.text == "first"
    assert [e.event for e in await store.events("acme", record.id)].count("result") == 1


async def test_events_for_an_unknown_task_are_ignored(store: TaskStore) -> None:
    ghost = new_record()

    assert await store.apply(started(ghost)) is False
    assert await store.get("acme", ghost.id) is None


async def test_events_naming_another_tenant_are_ignored(store: TaskStore) -> None:
    record = new_record("acme")
    await store.create(record)

    assert await store.apply(started(new_record("other", id=record.id))) is False
    assert summary(await store.events("acme", record.id)) == [("status", ("queued", 0))]


# -- live waiting -------------------------------------------------------------------------------


async def test_a_waiting_reader_wakes_on_a_new_event(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    seen = await store.events("acme", record.id)

    waiting = asyncio.create_task(store.events("acme", record.id, after=seen[-1].id, timeout=HANG))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await store.apply(started(record))

    async with asyncio.timeout(HANG):
        woke = await waiting
    assert summary(woke) == [("status", ("running", 1))]


async def test_a_wait_without_news_ends_empty_after_the_timeout(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)

    assert await store.events("acme", record.id, after="1", timeout=0.1) == []


async def test_a_finished_task_is_not_waited_on(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    await store.apply(succeeded(record, 0))
    last = (await store.events("acme", record.id))[-1]

    async with asyncio.timeout(HANG / 2):
        assert await store.events("acme", record.id, after=last.id, timeout=HANG) == []


async def test_many_readers_of_one_task_all_wake(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    readers = [
        asyncio.create_task(store.events("acme", record.id, after="1", timeout=HANG))
        for _ in range(20)
    ]
    await asyncio.sleep(0.05)
    await store.apply(started(record))

    async with asyncio.timeout(HANG):
        results = await asyncio.gather(*readers)
    assert all(summary(r) == [("status", ("running", 1))] for r in results)


async def test_closing_the_store_ends_waiting_readers(store: TaskStore) -> None:
    record = new_record()
    await store.create(record)
    waiting = asyncio.create_task(store.events("acme", record.id, after="1", timeout=HANG))
    await asyncio.sleep(0.1)

    await store.close()

    async with asyncio.timeout(HANG / 2):
        with pytest.raises(StoreUnavailable):
            await waiting
    await store.close()  # idempotent


# -- expiry ---------------------------------------------------------------------------------------


async def test_memory_store_expires_a_task_ttl_after_it_ends() -> None:
    now = [1000.0]
    store = MemoryTaskStore(60, safety_ttl_seconds=3600, clock=lambda: now[0])
    record = new_record()
    await store.create(record, "key-1")
    now[0] += 600  # far beyond the TTL, but the task has not ended
    await store.apply(succeeded(record, 0))

    now[0] += 59
    assert await store.get("acme", record.id) is not None
    now[0] += 2
    assert await store.get("acme", record.id) is None
    assert await store.events("acme", record.id) == []
    assert (await store.create(replacement := new_record(), "key-1")).id == replacement.id


async def test_memory_store_drops_a_task_that_never_ends_after_the_safety_ttl() -> None:
    now = [1000.0]
    store = MemoryTaskStore(60, safety_ttl_seconds=3600, clock=lambda: now[0])
    record = new_record()
    await store.create(record)

    now[0] += 3601
    await store.create(new_record())  # writes sweep expired entries

    assert await store.get("acme", record.id) is None
    assert len(store._entries) == 1


@pytest.mark.redis
async def test_redis_keys_expire_ttl_after_the_task_ends(redis_url: str) -> None:
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=TTL, safety_ttl_seconds=86400)
    client = aioredis.Redis.from_url(redis_url)
    try:
        record = new_record()
        await store.create(record, "key-1")
        await store.apply(started(record))
        await store.apply(delta(record, 2, "early"))  # buffered
        keys = [f"orchestrator:task:{record.id}{suffix}" for suffix in ("", ":log", ":buf")]
        idem = "orchestrator:idem:acme:key-1"
        for key in [*keys, idem]:
            assert TTL * 1000 < await client.pttl(key) <= 86400 * 1000, key

        await store.apply(succeeded(record, 3))

        for key in (keys[0], keys[1], idem):
            assert 0 < await client.pttl(key) <= TTL * 1000, key
        assert await client.exists(keys[2]) == 0
    finally:
        await client.aclose()
        await store.close()


# -- pending tasks: created, not yet confirmed published --------------------------------------
# (``quick_store``: tests/api/conftest.py)


async def test_a_replay_of_a_key_whose_task_is_not_confirmed_yet_is_refused(
    store: TaskStore,
) -> None:
    first = new_record()
    await store.create(first, "key-1")

    with pytest.raises(IdempotencyKeyInUse):
        await store.create(second := new_record(), "key-1")

    assert await store.get("acme", second.id) is None
    await store.confirm("acme", first.id)
    assert (await store.create(new_record(), "key-1")).id == first.id


async def test_an_applied_event_confirms_a_task(store: TaskStore) -> None:
    first = new_record()
    await store.create(first, "key-1")  # its confirm was lost

    await store.apply(started(first))

    assert (await store.create(new_record(), "key-1")).id == first.id


async def test_a_key_whose_task_was_abandoned_goes_to_the_next_task(
    quick_store: TaskStore,
) -> None:
    abandoned = new_record()
    await quick_store.create(abandoned, "key-1")  # neither confirmed nor discarded
    await asyncio.sleep(PENDING * 2)

    replacement = new_record()
    stored = await quick_store.create(replacement, "key-1")

    assert stored.id == replacement.id
    await quick_store.confirm("acme", replacement.id)
    assert (await quick_store.create(new_record(), "key-1")).id == replacement.id


async def test_a_confirmed_task_is_never_abandoned(quick_store: TaskStore) -> None:
    first = await submit(quick_store, new_record(), "key-1")
    await asyncio.sleep(PENDING * 2)

    assert (await quick_store.create(new_record(), "key-1")).id == first.id


async def test_confirming_an_unknown_task_does_nothing(store: TaskStore) -> None:
    await store.confirm("acme", "nope")

    assert await store.get("acme", "nope") is None


# -- idempotency keys reused by another request -----------------------------------------------


async def test_a_replay_with_another_fingerprint_is_refused(store: TaskStore) -> None:
    first = await submit(store, new_record(), "key-1", fingerprint="request-a")

    with pytest.raises(IdempotencyKeyReused):
        await store.create(other := new_record(), "key-1", fingerprint="request-b")

    assert await store.get("acme", other.id) is None
    replay = await store.create(new_record(), "key-1", fingerprint="request-a")
    assert replay.id == first.id


async def test_another_fingerprint_is_refused_even_while_the_task_is_pending(
    store: TaskStore,
) -> None:
    await store.create(new_record(), "key-1", fingerprint="request-a")

    with pytest.raises(IdempotencyKeyReused):
        await store.create(new_record(), "key-1", fingerprint="request-b")


async def test_a_key_stored_without_a_fingerprint_matches_any_replay(store: TaskStore) -> None:
    first = await submit(store, new_record(), "key-1")

    assert (await store.create(new_record(), "key-1", fingerprint="any")).id == first.id


async def test_a_short_attempt_s_start_comes_from_its_terminal_event(store: TaskStore) -> None:
    # An attempt shorter than the started delay publishes its terminal event alone: the
    # worker's start time in it is the record's started_at, not the end.
    record = await store.create(new_record())
    done = event(
        record,
        EventKind.SUCCEEDED,
        text="quick",
        started_at=1_700_000_010.0,  # 0.123 s before the event (at = ...010.123456)
    )

    assert await store.apply(done)

    stored = await store.get("acme", record.id)
    assert stored is not None
    assert stored.started_at == 1_700_000_010.0
    assert stored.finished_at == done.at


async def test_a_started_event_s_start_is_when_the_attempt_began(store: TaskStore) -> None:
    # ``started`` goes out up to a second late; the start it carries is the real one.
    record = await store.create(new_record())
    late = event(record, EventKind.STARTED, started_at=1_700_000_009.5)

    assert await store.apply(late)

    stored = await store.get("acme", record.id)
    assert stored is not None
    assert stored.started_at == 1_700_000_009.5
