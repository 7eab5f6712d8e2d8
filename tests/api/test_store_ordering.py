"""Property: the Redis store's Lua script and the memory store's cursor apply any
interleaving of a task's events (duplicated, reordered, across attempts) identically, and
every resulting log keeps the promises clients rely on."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator_api.model import StoredEvent, TaskRecord
from orchestrator_api.store import MemoryTaskStore, RedisTaskStore, TaskStore
from orchestrator_tasks.messages import ResultEvent
from tests.api.test_store import delta, failed, new_record, started, succeeded

TERMINAL = {"result", "error"}


def attempt_events(record: TaskRecord, attempt: int, deltas: int, end: str) -> list[ResultEvent]:
    events = [started(record, attempt)]
    events += [delta(record, seq, f"a{attempt}s{seq}", attempt) for seq in range(1, deltas + 1)]
    if end == "succeeded":
        events.append(succeeded(record, deltas + 1, f"answer {attempt}", attempt))
    elif end == "failed":
        events.append(failed(record, deltas + 1, attempt))
    return events  # end == "crashed": the attempt never finished


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[TaskRecord, list[ResultEvent]]:
    """A task's events as the API might receive them: shuffled, with redeliveries."""
    record = new_record()
    events: list[ResultEvent] = []
    for attempt in range(1, draw(st.integers(1, 3)) + 1):
        deltas = draw(st.integers(0, 4))
        end = draw(st.sampled_from(["succeeded", "failed", "crashed"]))
        events += attempt_events(record, attempt, deltas, end)
    repeats = draw(st.lists(st.sampled_from(events), max_size=4))
    order = draw(st.permutations(events + repeats))
    return record, list(order)


Outcome = tuple[list[bool], list[StoredEvent], TaskRecord | None]


async def run(store: TaskStore, record: TaskRecord, events: list[ResultEvent]) -> Outcome:
    await store.create(record)
    outcomes = [await store.apply(e) for e in events]
    return outcomes, await store.events("acme", record.id), await store.get("acme", record.id)


def check_log(log: list[StoredEvent]) -> None:
    ids = [int(e.id) for e in log]
    assert ids == sorted(set(ids)), "ids strictly increasing"
    terminals = [i for i, e in enumerate(log) if e.event in TERMINAL]
    assert len(terminals) <= 1, "one terminal event at most"
    if terminals:
        assert terminals[0] == len(log) - 1, "nothing after the terminal event"
    attempts = [e.data["attempt"] for e in log]
    assert attempts == sorted(attempts), "attempts never go back"
    texts = [e.data["text"] for e in log if e.event == "delta"]
    assert len(texts) == len(set(texts)), "no delta twice"
    for attempt in set(attempts):
        mine = [t for t in texts if t.startswith(f"a{attempt}s")]
        assert mine == sorted(mine, key=lambda t: int(t.split("s")[1])), "deltas in seq order"


@settings(max_examples=60, deadline=None)
@given(deliveries())
def test_memory_store_logs_keep_their_promises(
    case: tuple[TaskRecord, list[ResultEvent]],
) -> None:
    record, events = case
    _, log, _ = asyncio.run(run(MemoryTaskStore(60), record, events))
    check_log(log)


@pytest.mark.redis
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(deliveries())
def test_redis_and_memory_stores_agree(
    redis_url: str, case: tuple[TaskRecord, list[ResultEvent]]
) -> None:
    record, events = case

    async def on_redis() -> Outcome:
        store = RedisTaskStore.from_url(redis_url, ttl_seconds=60)
        try:
            return await run(store, record, events)
        finally:
            await store.close()

    assert asyncio.run(on_redis()) == asyncio.run(run(MemoryTaskStore(60), record, events))
