"""A batch outlives the API process running it: on Redis, another runner (another API
replica, or the same one restarted) takes the lease over and goes on from the store, and a
stretch of lines submitted again gets its own tasks back (each line's Idempotency-Key)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from orchestrator_api.batch import BatchRecord, BatchRunner, BatchStatus, FileInfo, RedisBatchStore
from orchestrator_api.store import RedisTaskStore
from orchestrator_api.tasks import TaskService
from orchestrator_broker import Message, Priority
from orchestrator_broker.memory import MemoryBroker
from orchestrator_tasks.messages import EventKind, ResultEvent

pytestmark = pytest.mark.redis

LINES = 600  # more than two of a runner's steps


class CountingBroker(MemoryBroker):
    """Counts the task messages published, by task id."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[str] = []
        self.priorities: list[Priority] = []
        self.deltas: set[bool] = set()

    async def publish(
        self,
        stream: str,
        message: Message,
        *,
        key: str | None = None,
        priority: Priority = "normal",
    ) -> str:
        self.published.append(message.id)
        self.priorities.append(priority)
        if stream == "tasks":
            self.deltas.add(message.payload["deltas"])
        return await super().publish(stream, message, key=key, priority=priority)


def _input() -> bytes:
    body = {"model": "echo", "messages": [{"role": "user", "content": "same question"}]}
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"c{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**body, "seed": n},
            }
        )
        + b"\n"
        for n in range(LINES)
    )


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _runner(store: RedisBatchStore, tasks: TaskService, lease: float) -> BatchRunner:
    return BatchRunner(
        store,
        tasks,
        file_ttl_seconds=600,
        max_prompt_chars=10_000,
        max_line_bytes=10_000,
        interval=0.02,
        lease_seconds=lease,
    )


async def test_a_second_runner_takes_over_and_every_line_runs_once(redis_url: str) -> None:
    broker = CountingBroker()
    task_store = RedisTaskStore.from_url(redis_url, ttl_seconds=600)
    store = RedisBatchStore.from_url(redis_url, ttl_seconds=600)
    tasks = TaskService(broker, task_store, "tasks")
    now = time.time()
    await store.put_file(
        FileInfo("file-in", "acme", "in.jsonl", "batch", 0, now, now + 600), _chunks(_input())
    )
    record = BatchRecord(
        id="batch_x",
        tenant="acme",
        input_file_id="file-in",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        status=BatchStatus.VALIDATING,
        created_at=now,
        expires_at=now + 86_400,
    )
    await store.create_batch(record)
    try:
        # The first runner reads one stretch, then dies after submitting the next one but
        # before recording it.
        first = _runner(store, tasks, lease=0.2)
        assert await store.acquire("batch_x", "first", 0.2)
        await first._step(record)  # the validation pass: nothing is submitted yet
        validated = await store.load("batch_x")
        assert validated is not None
        assert validated.status is BatchStatus.IN_PROGRESS
        assert validated.lines == 0
        assert broker.published == []
        await first._step(validated)
        recorded = await store.load("batch_x")
        assert recorded is not None
        assert 0 < recorded.lines < LINES

        async def crash(*_: Any) -> None:
            raise ConnectionError("the process died")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store, "add_lines", crash)
            with pytest.raises(ConnectionError):
                await first._step(recorded)
        submitted_before = len(set(broker.published))

        second = _runner(store, tasks, lease=5.0)
        running = asyncio.create_task(second.run())
        try:
            finished = await _answer_until_done(store, task_store)
        finally:
            await second.stop()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    finally:
        await store.close()
        await task_store.close()

    assert finished.status is BatchStatus.COMPLETED
    assert (finished.lines, finished.completed, finished.failed) == (LINES, LINES, 0)
    assert submitted_before > recorded.lines  # the lost stretch had been published...
    assert len(broker.published) == len(set(broker.published)) == LINES  # ...and only once
    assert set(broker.priorities) == {"low"}  # a batch runs low: interactive tasks overtake it
    assert broker.deltas == {False}  # and nobody streams its lines' text


async def _answer_until_done(store: RedisBatchStore, task_store: RedisTaskStore) -> BatchRecord:
    """Play the worker: answer each pending line's task, until the batch has finished."""
    deadline = time.monotonic() + 60
    while True:
        record = await store.load("batch_x")
        assert record is not None
        if record.status.terminal:
            return record
        for line in await store.pending("batch_x", 1000):
            await task_store.apply(
                ResultEvent(line.task_id, "acme", EventKind.SUCCEEDED, 1, 0, time.time(), text="a")
            )
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.02)
