"""``TaskStore.cancel``: a queued task is cancelled at once, a running one when its worker
says so (with its partial text), a finished one refuses, a repeat is harmless; a task that
joined another, or that others joined, ends cancelled alone while the run goes on for the
others. Both stores pass this suite."""

from __future__ import annotations

import pytest

from orchestrator_api.model import TaskStatus
from orchestrator_api.store import TaskFinished, TaskStore
from orchestrator_tasks.messages import EventKind
from tests.api.test_store import (
    delta,
    event,
    failed,
    new_record,
    started,
    submit,
    succeeded,
    summary,
)

TTL = 60.0
KEY = "k" * 64


async def test_a_queued_task_is_cancelled_at_once(store: TaskStore) -> None:
    record = await submit(store, new_record())

    cancellation = await store.cancel("acme", record.id)

    assert cancellation is not None
    assert cancellation.stop_run is True  # the workers must be told: it may still run
    shown = await store.get("acme", record.id)
    assert shown == cancellation.record
    assert shown.status is TaskStatus.CANCELLED
    assert (shown.started_at, shown.partial_text) == (None, None)
    assert shown.finished_at is not None
    assert summary(await store.events("acme", record.id))[-1] == ("cancelled", ("", 0))
    # The worker's late events change nothing.
    assert await store.apply(started(record)) is False
    again = await store.cancel("acme", record.id)
    assert again is not None
    assert again.record == shown  # harmless, and it still tells the workers
    assert again.stop_run is True


async def test_a_running_task_stays_running_until_its_worker_stops_it(store: TaskStore) -> None:
    record = await submit(store, new_record())
    await store.apply(started(record))
    await store.apply(delta(record, 1, "Hel"))

    cancellation = await store.cancel("acme", record.id)

    assert cancellation is not None
    assert (cancellation.record.status, cancellation.stop_run) == (TaskStatus.RUNNING, True)
    stopped = event(record, EventKind.CANCELLED, seq=2, text="Hello")
    assert await store.apply(stopped) is True
    shown = await store.get("acme", record.id)
    assert shown is not None
    assert shown.status is TaskStatus.CANCELLED
    assert shown.partial_text == "Hello"
    assert (shown.result, shown.error) == (None, None)
    assert shown.started_at is not None
    events = await store.events("acme", record.id)
    assert events[-1].event == "cancelled"
    assert events[-1].data == {"partial_text": "Hello", "attempt": 1}


@pytest.mark.parametrize("end", ["succeeded", "failed"])
async def test_a_finished_task_cannot_be_cancelled(store: TaskStore, end: str) -> None:
    record = await submit(store, new_record())
    await store.apply(succeeded(record, 0) if end == "succeeded" else failed(record, 0))

    with pytest.raises(TaskFinished) as raised:
        await store.cancel("acme", record.id)

    assert raised.value.record.status.value == end
    shown = await store.get("acme", record.id)
    assert shown is not None
    assert shown.status.value == end


async def test_another_tenants_task_cannot_be_cancelled(store: TaskStore) -> None:
    record = await submit(store, new_record())

    assert await store.cancel("globex", record.id) is None
    assert await store.cancel("acme", "no-such-task") is None
    shown = await store.get("acme", record.id)
    assert shown is not None
    assert shown.status is TaskStatus.QUEUED


async def test_a_cancelled_follower_ends_alone(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)
    await store.apply(started(leader))
    await store.apply(delta(leader, 1, "Hel"))
    seen = await store.events("acme", follower.id)

    cancellation = await store.cancel("acme", follower.id)

    assert cancellation is not None
    assert cancellation.stop_run is False  # the leader runs on
    shown = await store.get("acme", follower.id)
    assert shown is not None
    assert (shown.status, shown.partial_text, shown.joined) == (
        TaskStatus.CANCELLED,
        "Hel",
        leader.id,
    )
    # Its stream, resumed where it was, ends with its own cancelled event.
    rest = await store.events("acme", follower.id, after=seen[-1].id)
    assert [e.event for e in rest] == ["cancelled"]
    await store.apply(succeeded(leader, 2, "Hello"))
    leader_done = await store.get("acme", leader.id)
    assert leader_done is not None
    assert leader_done.status is TaskStatus.SUCCEEDED
    still = await store.get("acme", follower.id)
    assert still is not None
    assert still.status is TaskStatus.CANCELLED


async def test_a_cancelled_leader_ends_alone_while_its_run_goes_on(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)
    await store.apply(started(leader))
    await store.apply(delta(leader, 1, "Hel"))
    seen = await store.events("acme", leader.id)

    cancellation = await store.cancel("acme", leader.id)

    assert cancellation is not None
    assert cancellation.stop_run is False  # the run goes on for the follower
    shown = await store.get("acme", leader.id)
    assert shown is not None
    assert (shown.status, shown.partial_text) == (TaskStatus.CANCELLED, "Hel")
    rest = await store.events("acme", leader.id, after=seen[-1].id)
    assert [e.event for e in rest] == ["cancelled"]
    # A new identical task does not join a cancelled one.
    fresh = await submit(store, new_record(), cache_key=KEY)
    assert fresh.joined is None
    await store.apply(delta(leader, 2, "lo"))
    await store.apply(succeeded(leader, 3, "Hello"))
    done = await store.get("acme", follower.id)
    assert done is not None
    assert done.status is TaskStatus.SUCCEEDED
    assert done.result is not None
    assert done.result.text == "Hello"
    still = await store.get("acme", leader.id)
    assert still is not None
    assert still.status is TaskStatus.CANCELLED
    assert [e.event for e in await store.events("acme", leader.id, after=rest[-1].id)] == []
    again = await store.cancel("acme", leader.id)
    assert again is not None
    assert again.stop_run is False
    listed = await store.list_tasks("acme", limit=10, status=TaskStatus.CANCELLED)
    assert [r.id for r in listed.records] == [leader.id]


async def test_a_leader_whose_followers_all_cancelled_is_stopped_itself(store: TaskStore) -> None:
    leader = await submit(store, new_record(), cache_key=KEY)
    follower = await submit(store, new_record(), cache_key=KEY)
    await store.apply(started(leader))
    first = await store.cancel("acme", follower.id)
    assert first is not None
    assert first.stop_run is False

    cancellation = await store.cancel("acme", leader.id)

    assert cancellation is not None
    assert cancellation.stop_run is True  # nobody follows its run any more: stop it
    assert cancellation.record.status is TaskStatus.RUNNING  # until its worker says so
