"""The worker on real Redis: the same behaviour through RedisStreamsBroker, and the process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

import pytest

from orchestrator_broker import ConfigError as BrokerConfigError
from orchestrator_broker import ConsumeOptions
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_tasks.messages import EventKind
from orchestrator_worker import Worker
from tests.support.redis_server import RedisServer
from tests.worker.support import (
    TASKS,
    FakeProvider,
    collect,
    kinds,
    registry,
    settings,
    settled,
    submit,
    wait_for,
)

pytestmark = pytest.mark.redis

S, OK = EventKind.STARTED, EventKind.SUCCEEDED


@pytest.fixture
async def redis_broker(redis_url: str) -> AsyncIterator[RedisStreamsBroker]:
    broker = RedisStreamsBroker.from_url(redis_url)
    yield broker
    await broker.close()


async def test_echo_tasks_run_through_redis(
    redis_broker: RedisStreamsBroker, worker_factory
) -> None:
    tasks = [await submit(redis_broker, f"answer number {i}") for i in range(30)]
    await worker_factory(redis_broker, concurrency=10)

    events = await collect(redis_broker, 30)

    for task in tasks:
        assert kinds(events[task.task_id]) == [OK]
        assert [event.seq for event in events[task.task_id]] == [0]
        assert events[task.task_id][-1].text == task.messages[-1].content
    await wait_for(lambda: settled(redis_broker))
    assert await redis_broker.backlog(TASKS, "workers") == 0


async def test_streamed_deltas_arrive_in_order_through_redis(
    redis_broker: RedisStreamsBroker, worker_factory
) -> None:
    slow = FakeProvider(chunks=[f"{i} " for i in range(10)], delay=0.03)
    task = await submit(redis_broker, model="fake")
    await worker_factory(redis_broker, providers=registry(slow), delta_flush_ms=50)

    events = (await collect(redis_broker, 1))[task.task_id]

    assert [event.seq for event in events] == list(range(len(events)))
    assert EventKind.DELTA in kinds(events)
    assert events[-1].text == "".join(slow.chunks)


async def test_stop_hands_unfinished_tasks_back_through_redis(
    redis_broker: RedisStreamsBroker, worker_factory
) -> None:
    blocked = FakeProvider(gate=asyncio.Event())
    await submit(redis_broker, model="fake")
    running = await worker_factory(redis_broker, providers=registry(blocked), shutdown_grace=0.1)
    await wait_for(lambda: blocked.started == 1)

    await running.stop()

    assert await redis_broker.pending_count(TASKS, "workers") == 0
    assert await redis_broker.backlog(TASKS, "workers") == 1


async def test_a_crashed_workers_task_is_reclaimed_as_the_next_attempt(
    redis_broker: RedisStreamsBroker, worker_factory
) -> None:
    task = await submit(redis_broker)
    await redis_broker.ensure_group(TASKS, "workers")
    # A worker that took the task and died: it never settles and never renews the lease.
    crashed = redis_broker.consume(
        TASKS, "workers", "crashed", ConsumeOptions(lease=1.0, auto_extend=False)
    )
    await anext(crashed)
    await crashed.aclose()

    await worker_factory(redis_broker, lease_seconds=1.0)
    events = (await collect(redis_broker, 1, timeout=30))[task.task_id]

    # A retried attempt announces itself at once (clients drop earlier text).
    assert [(event.kind, event.attempt) for event in events] == [(S, 2), (OK, 2)]


async def test_the_worker_process_serves_until_sigterm(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(password="s3cret-pw")
    broker = RedisStreamsBroker.from_url(server.url)
    await broker.ensure_group("results", "test")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "JAEGER"))},
        "REDIS_URI": server.url,
        "NUMBER_OF_WORKERS": "3",
        "CONSUMER_NAME": "proc-1",
        "OTEL_TRACES_EXPORTER": "none",
        "EVENT_LOOP": "asyncio",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator_worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        task = await submit(broker, "from another process")
        events = (await collect(broker, 1, timeout=30))[task.task_id]
        assert kinds(events) == [OK]
        assert events[-1].text == "from another process"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, raw_err = await process.communicate()
        err = raw_err.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await broker.close()

    assert process.returncode == 0, err
    startup = [line for line in err.splitlines() if "consuming tasks" in line]
    assert len(startup) == 1, err
    assert "concurrency 3" in startup[0]
    assert "event loop asyncio" in startup[0]
    assert "***" in startup[0]
    assert "s3cret-pw" not in err
    assert "SIGTERM received" in err


async def test_a_consumer_setting_the_broker_refuses_stops_the_worker(redis_url: str) -> None:
    # ConsumeOptions.block (2 s) must stay below the read timeout: this broker refuses it.
    broker = RedisStreamsBroker.from_url(redis_url, read_timeout=1.0)
    try:
        worker = Worker(broker, settings())
        with pytest.raises(BrokerConfigError):
            async with asyncio.timeout(15):
                await worker.run()
    finally:
        await broker.close()


async def test_a_task_whose_result_cannot_be_written_runs_again_after_an_outage(
    redis_server_factory: Callable[..., RedisServer], worker_factory
) -> None:
    server = redis_server_factory(appendonly=True)
    broker = RedisStreamsBroker.from_url(server.url)
    gate = asyncio.Event()
    fake = FakeProvider(chunks=["survived"], gate=gate)
    try:
        task = await submit(broker, model="fake")
        await worker_factory(broker, providers=registry(fake))
        await wait_for(lambda: fake.started == 1)

        server.kill()
        gate.set()  # the answer is ready while Redis is down
        await wait_for(lambda: fake.running == 0)
        await asyncio.sleep(0.5)
        server.start()

        events = (await collect(broker, 1, timeout=60))[task.task_id]
        assert events[-1].kind == OK
        # Attempt 2, or later if the first writes after the restart hit stale connections.
        assert events[-1].attempt >= 2
        final = [e for e in events if e.attempt == events[-1].attempt]
        assert [(e.kind, e.seq) for e in final] == [(S, 0), (OK, 1)]
        assert events[-1].text == "survived"
        await wait_for(lambda: settled(broker), timeout=30)
    finally:
        await broker.close()


async def test_stop_lets_in_flight_tasks_finish_through_redis(
    redis_broker: RedisStreamsBroker, worker_factory
) -> None:
    gate = asyncio.Event()
    fake = FakeProvider(gate=gate, chunks=["finished"])
    for _ in range(3):
        await submit(redis_broker, model="fake")
    running = await worker_factory(redis_broker, providers=registry(fake), concurrency=1)
    await wait_for(lambda: fake.started == 1)

    running.worker.stop()
    gate.set()
    await running.stop()

    events = await collect(redis_broker, 1)
    assert [task_events[-1].text for task_events in events.values()] == ["finished"]
    assert await redis_broker.pending_count(TASKS, "workers") == 0
    assert await redis_broker.backlog(TASKS, "workers") == 2
