"""Retries on real Redis: a delayed nack waits in the broker, and a task out of attempts lands
in ``tasks:dead`` with its reason while its client hears ``failed``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator_broker.redis_streams import RedisStreamsBroker
from tests.support.fake_llm import Reply
from tests.worker.faults import FAIL, FAST_RETRIES, OK, S, TimedFakeLLM, llm_registry
from tests.worker.support import TASKS, collect, settled, submit, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_broker(redis_url: str) -> AsyncIterator[RedisStreamsBroker]:
    broker = RedisStreamsBroker.from_url(redis_url)
    yield broker
    await broker.close()


async def test_a_rate_limited_task_waits_in_redis_then_succeeds(
    redis_broker: RedisStreamsBroker, worker_factory, fake: TimedFakeLLM
) -> None:
    fake.script(Reply.error(429, headers={"Retry-After": "1"}), Reply.answer("later"))
    providers = llm_registry(fake)
    try:
        task = await submit(redis_broker, model="openai/gpt-4o-mini")
        running = await worker_factory(redis_broker, providers=providers, **FAST_RETRIES)

        events = (await collect(redis_broker, 1))[task.task_id]
        await wait_for(lambda: settled(redis_broker))
        await running.stop()
    finally:
        await providers.close()

    first, second = fake.times_of("openai")
    assert second - first >= 0.95  # the second asked for (a lower bound only)
    assert [(e.kind, e.attempt) for e in events] == [(S, 2), (OK, 2)]
    assert events[-1].text == "later"
    assert await redis_broker.backlog(TASKS, "workers") == 0
    assert await redis_broker.dead_letters(TASKS) == []


async def test_a_task_out_of_attempts_is_dead_lettered_in_redis(
    redis_broker: RedisStreamsBroker, worker_factory, fake: TimedFakeLLM
) -> None:
    fake.default = Reply.error(503)
    providers = llm_registry(fake)
    try:
        task = await submit(redis_broker, model="openai/gpt-4o-mini")
        running = await worker_factory(
            redis_broker, providers=providers, max_attempts=2, **FAST_RETRIES
        )

        events = (await collect(redis_broker, 1))[task.task_id]
        await wait_for(lambda: settled(redis_broker))
        await running.stop()
    finally:
        await providers.close()

    assert fake.count == 2
    assert events[-1].kind == FAIL
    assert events[-1].attempt == 2
    assert events[-1].error is not None
    assert events[-1].error.type == "server_error"
    (letter,) = await redis_broker.dead_letters(TASKS)
    assert "attempts exhausted" in letter.reason
    assert letter.delivery_count == 2
    assert await redis_broker.backlog(TASKS, "workers") == 0
