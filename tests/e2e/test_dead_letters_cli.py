"""``ai-orchestrator dead-letters list|replay|purge`` as an operator runs it: the real command,
as a subprocess, against a throwaway redis-server where tasks were dead-lettered as a worker
does it (a ``failed`` event, then the dead letter)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import attrs
import orjson
import pytest
import redis.asyncio as aioredis

from orchestrator_api.model import TaskRecord, TaskStatus
from orchestrator_api.store import RedisTaskStore
from orchestrator_broker import ConsumeOptions, Message, RedisStreamsBroker
from orchestrator_broker.message import decode_fields
from orchestrator_tasks import (
    ErrorInfo,
    EventKind,
    ResultEvent,
    TaskMessage,
    decode_task,
    encode_task,
    messages_of,
)
from tests.e2e.support import clean_env
from tests.e2e.test_cli import Outcome, dead_redis_uri, run_cli

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TASKS, RESULTS, GROUP = "tasks", "results", "workers"
QUICK = ConsumeOptions(block=0.1, lease=30.0)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@attrs.define
class Deployment:
    """What the API and a worker would have left on Redis, seen through their own modules."""

    url: str
    broker: RedisStreamsBroker
    store: RedisTaskStore
    client: aioredis.Redis

    async def cli(self, *args: str, **env: str) -> Outcome:
        return await run_cli(["dead-letters", *args], clean_env(REDIS_URI=self.url, **env))

    async def dead_letter_task(
        self, tenant: str = "acme", *, attempts: int = 2, model: str | None = "echo"
    ) -> TaskMessage:
        """Submit a task as the API does, then run it ``attempts`` times and give up on it as
        the worker does: ``failed`` on the last attempt, then the dead letter."""
        task = TaskMessage(
            task_id=f"task-{time.time_ns()}",
            tenant=tenant,
            messages=messages_of("hello"),
            model=model,
            submitted_at=time.time(),
        )
        record = TaskRecord(
            id=task.task_id,
            tenant=tenant,
            status=TaskStatus.QUEUED,
            created_at=task.submitted_at,
            model=model,
            metadata={"mine": True},
        )
        await self.store.create(record)
        message = Message(encode_task(task), id=task.task_id, headers={"traceparent": TRACEPARENT})
        await self.broker.ensure_group(TASKS, GROUP)
        await self.broker.publish(TASKS, message)
        async with contextlib.aclosing(self.broker.consume(TASKS, GROUP, "w1", QUICK)) as got:
            for attempt in range(1, attempts + 1):
                delivery = await anext(got)
                assert delivery.delivery_count == attempt
                if attempt < attempts:
                    await delivery.nack(0)
                    continue
                await self.store.apply(
                    ResultEvent(
                        task_id=task.task_id,
                        tenant=tenant,
                        kind=EventKind.FAILED,
                        attempt=attempt,
                        seq=0,
                        at=time.time(),
                        error=ErrorInfo(type="server_error", message="the provider is down"),
                    )
                )
                await delivery.dead_letter(f"attempts exhausted ({attempt}): server_error")
        return task

    async def queued_tasks(self) -> list[tuple[Message, TaskMessage]]:
        """The tasks on the tasks stream, as its entries are (not read by any worker here)."""
        entries = await self.client.xrange(TASKS)
        messages = [decode_fields(fields)[0] for _, fields in entries]
        return [(message, decode_task(message.payload)) for message in messages]


@pytest.fixture
async def deployment(redis_url: str) -> AsyncIterator[Deployment]:
    broker = RedisStreamsBroker.from_url(redis_url)
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=300)
    client = aioredis.Redis.from_url(redis_url)
    yield Deployment(redis_url, broker, store, client)
    await client.aclose()
    await store.close()
    await broker.close()


def json_lines(outcome: Outcome) -> list[dict[str, Any]]:
    assert outcome.returncode == 0, outcome.stderr
    return [orjson.loads(line) for line in outcome.stdout.splitlines()]


# -- list -------------------------------------------------------------------------------------


async def test_list_prints_one_line_per_dead_letter_oldest_first(deployment: Deployment) -> None:
    first = await deployment.dead_letter_task("acme")
    second = await deployment.dead_letter_task("globex")

    outcome = await deployment.cli("list")

    assert outcome.returncode == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert len(lines) == 2
    assert first.task_id in lines[0]
    assert "acme" in lines[0]
    assert "attempts exhausted (2)" in lines[0]
    assert second.task_id in lines[1]
    assert outcome.stderr == ""


async def test_list_json_has_the_documented_fields(deployment: Deployment) -> None:
    before = time.time()
    task = await deployment.dead_letter_task(attempts=3)

    (line,) = json_lines(await deployment.cli("list", "--json"))

    assert set(line) == {"entry_id", "task_id", "tenant", "reason", "delivery_count", "dead_at"}
    assert (line["task_id"], line["tenant"], line["delivery_count"]) == (task.task_id, "acme", 3)
    assert line["reason"] == "attempts exhausted (3): server_error"
    assert before - 1 <= datetime.fromisoformat(line["dead_at"]).timestamp() <= time.time() + 1
    (dead,) = await deployment.broker.dead_letters(TASKS)
    assert line["entry_id"] == dead.entry_id


async def test_list_limit_and_the_results_stream(deployment: Deployment) -> None:
    for _ in range(3):
        await deployment.dead_letter_task()
    await deployment.broker.ensure_group(RESULTS, "api")
    await deployment.broker.publish(RESULTS, Message({"task_id": "t9", "tenant": "acme"}))
    async with contextlib.aclosing(deployment.broker.consume(RESULTS, "api", "a1", QUICK)) as got:
        await (await anext(got)).dead_letter("not a ResultEvent: kind missing")

    assert len(json_lines(await deployment.cli("list", "--json", "--limit", "2"))) == 2
    (result,) = json_lines(await deployment.cli("list", "--json", "--stream", "results"))
    assert (result["task_id"], result["reason"]) == ("t9", "not a ResultEvent: kind missing")


# -- replay -----------------------------------------------------------------------------------


async def test_replay_requeues_the_task_republishes_it_then_removes_its_dead_letter(
    deployment: Deployment,
) -> None:
    task = await deployment.dead_letter_task(attempts=2)
    other = await deployment.dead_letter_task()

    outcome = await deployment.cli("replay", task.task_id)

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout == f"replayed {task.task_id} (attempts so far: 2)\n"
    record = await deployment.store.get("acme", task.task_id)
    assert record is not None
    assert (record.status, record.attempts, record.error) == (TaskStatus.QUEUED, 2, None)
    assert record.metadata == {"mine": True}  # the record was still there: kept whole
    [(message, replayed)] = [
        (m, t) for m, t in await deployment.queued_tasks() if t.task_id == task.task_id
    ]
    # Its deadline counts from the replay (an outage may have outlasted the first one).
    assert replayed.submitted_at > task.submitted_at
    assert replayed == attrs.evolve(task, prior_attempts=2, submitted_at=replayed.submitted_at)
    assert message.id == task.task_id
    assert message.headers["traceparent"] == TRACEPARENT  # the task's own trace goes on
    remaining = await deployment.broker.dead_letters(TASKS)
    assert [decode_task(d.message.payload).task_id for d in remaining if d.message] == [
        other.task_id
    ]


async def test_replay_recreates_the_record_of_a_task_that_expired(
    deployment: Deployment,
) -> None:
    task = await deployment.dead_letter_task(attempts=1)
    await deployment.client.delete(
        f"orchestrator:task:{task.task_id}", f"orchestrator:task:{task.task_id}:log"
    )

    outcome = await deployment.cli("replay", task.task_id)

    assert outcome.returncode == 0, outcome.stderr
    record = await deployment.store.get("acme", task.task_id)
    assert record is not None
    assert (record.status, record.attempts, record.model) == (TaskStatus.QUEUED, 1, "echo")
    assert record.created_at == pytest.approx(task.submitted_at)
    assert record.trace_id == "0af7651916cd43dd8448eb211c80319c"
    listed = await deployment.store.list_tasks("acme", limit=5)
    assert [r.id for r in listed.records] == [task.task_id]


async def test_replay_all_replays_every_task_once(deployment: Deployment) -> None:
    tasks = [await deployment.dead_letter_task(tenant) for tenant in ("acme", "globex")]

    outcome = await deployment.cli("replay", "--all")

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        f"replayed {task.task_id} (attempts so far: 2)" for task in tasks
    ]
    assert await deployment.broker.dead_letters(TASKS) == []
    queued = [t.task_id for _, t in await deployment.queued_tasks()]
    assert sorted(queued) == sorted(task.task_id for task in tasks)
    again = await deployment.cli("replay", "--all")
    assert (again.returncode, again.stdout) == (0, "no dead-lettered task on tasks:dead\n")


async def test_replaying_a_task_without_a_dead_letter_fails_in_one_line_and_replays_nothing(
    deployment: Deployment,
) -> None:
    task = await deployment.dead_letter_task()

    outcome = await deployment.cli("replay", task.task_id, "no-such-task")

    assert outcome.returncode == 1
    assert outcome.stdout == ""
    (line,) = outcome.stderr_lines
    assert "no-such-task" in line
    assert "nothing was replayed" in line
    assert len(await deployment.broker.dead_letters(TASKS)) == 1
    record = await deployment.store.get("acme", task.task_id)
    assert record is not None
    assert record.status is TaskStatus.FAILED


async def test_replay_all_refuses_dead_letters_that_are_not_tasks(deployment: Deployment) -> None:
    await deployment.dead_letter_task()
    await deployment.broker.publish(TASKS, Message({"not": "a task"}))
    async with contextlib.aclosing(deployment.broker.consume(TASKS, GROUP, "w1", QUICK)) as got:
        await (await anext(got)).dead_letter("invalid task: task_id is missing")

    outcome = await deployment.cli("replay", "--all")

    assert outcome.returncode == 1
    (line,) = outcome.stderr_lines
    assert "not tasks" in line
    assert len(await deployment.broker.dead_letters(TASKS)) == 2


async def test_with_redis_down_replay_fails_in_one_line(deployment: Deployment) -> None:
    outcome = await run_cli(
        ["dead-letters", "replay", "--all"], clean_env(REDIS_URI=dead_redis_uri())
    )

    assert outcome.returncode == 1
    (line,) = outcome.stderr_lines
    assert line.startswith("ai-orchestrator: ")
    assert "Traceback" not in outcome.stderr


async def test_without_redis_uri_the_command_is_refused(deployment: Deployment) -> None:
    outcome = await run_cli(["dead-letters", "list"], clean_env())

    assert outcome.returncode == 2
    (line,) = outcome.stderr_lines
    assert "REDIS_URI" in line


# -- purge ------------------------------------------------------------------------------------


async def test_purge_older_than_keeps_the_younger_ones(deployment: Deployment) -> None:
    await deployment.dead_letter_task()

    kept = await deployment.cli("purge", "--older-than", "1h")
    assert (kept.returncode, kept.stdout) == (0, "purged 0 dead letter(s) from tasks:dead\n")
    assert len(await deployment.broker.dead_letters(TASKS)) == 1

    gone = await deployment.cli("purge")
    assert (gone.returncode, gone.stdout) == (0, "purged 1 dead letter(s) from tasks:dead\n")
    assert await deployment.broker.dead_letters(TASKS) == []


async def test_a_purge_age_that_is_not_a_duration_is_refused(deployment: Deployment) -> None:
    await deployment.dead_letter_task()

    outcome = await deployment.cli("purge", "--older-than", "soon")

    assert outcome.returncode == 2
    assert "--older-than" in outcome.stderr
    assert len(await deployment.broker.dead_letters(TASKS)) == 1
