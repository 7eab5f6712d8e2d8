"""Faults on real processes: a worker killed mid-task, Redis down and back, graceful shutdown.

Each test gets its own redis-server (``redis_server_factory``) and its own ``ai-orchestrator
api``/``worker`` subprocesses, killed or stopped by PID; ``services`` stops what is left.
Workers get a short ``LEASE_SECONDS`` so a dead worker's tasks are reclaimed quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis

from tests.e2e.support import (
    Api,
    Event,
    Service,
    Services,
    clean_env,
    final_attempt_text,
    prompt_of,
    wait_healthy,
    wait_until,
)
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEY = "e2e-faults-key-0123456789abcdef"
TASKS_STREAM = "tasks"
WORKER_GROUP = "workers"


def api_env(server: RedisServer, **extra: str) -> dict[str, str]:
    return clean_env(
        REDIS_URI=server.url, API_KEYS=f"faults:{KEY}", APP_ID="e2e-faults-api", **extra
    )


def worker_env(server: RedisServer, name: str, **extra: str) -> dict[str, str]:
    settings = {
        "REDIS_URI": server.url,
        "APP_ID": "e2e-faults-worker",
        "CONSUMER_NAME": name,
        "NUMBER_OF_WORKERS": "4",
        "LEASE_SECONDS": "2",
        "SHUTDOWN_GRACE_SECONDS": "1",
        **extra,
    }
    return clean_env(**settings)


def pending_by_consumer(server: RedisServer) -> dict[str, int]:
    """Entries of the tasks stream each worker holds right now (XPENDING summary)."""
    with (
        redis.Redis.from_url(server.url, decode_responses=True) as client,
        contextlib.suppress(redis.ResponseError),  # no stream or group yet
    ):
        summary: dict[str, Any] = client.xpending(TASKS_STREAM, WORKER_GROUP)
        return {c["name"]: int(c["pending"]) for c in summary["consumers"] or []}
    return {}


def consumers(server: RedisServer) -> set[str]:
    """The workers that have read from the tasks stream's group so far (XINFO CONSUMERS)."""
    with (
        redis.Redis.from_url(server.url, decode_responses=True) as client,
        contextlib.suppress(redis.ResponseError),  # no stream or group yet
    ):
        return {c["name"] for c in client.xinfo_consumers(TASKS_STREAM, WORKER_GROUP)}
    return set()


async def start_api(
    services: Services, session: aiohttp.ClientSession, env: dict[str, str]
) -> tuple[Service, Api]:
    api = services.api(env)
    await wait_healthy(session, api)
    assert api.url is not None
    return api, Api(session, api.url, KEY)


async def wait_running(client: Api, task_ids: list[str], *, timeout: float = 30.0) -> None:
    async def all_running() -> bool:
        states = [(await client.get(task_id))[1]["status"] for task_id in task_ids]
        return all(state == "running" for state in states)

    await wait_until("tasks running", all_running, timeout=timeout, interval=0.1)


def check_answers(done: dict[str, dict[str, Any]], prompts: dict[str, str]) -> None:
    assert set(done) == set(prompts)
    for task_id, prompt in prompts.items():
        task = done[task_id]
        assert task["status"] == "succeeded", task
        assert task["result"]["text"] == prompt


# ---- 3. a worker killed mid-task ----------------------------------------------------------


async def test_tasks_of_a_worker_killed_mid_task_finish_on_the_other_worker(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    server = redis_server_factory()
    _, client = await start_api(services, session, api_env(server))
    # The fair path with a cap: the tenant may run 6 at once over both workers (4 slots each).
    capped = {"TENANT_CONCURRENCY": "*=6"}
    doomed = services.worker(worker_env(server, "doomed", **capped), name="worker-doomed")
    survivor = services.worker(worker_env(server, "survivor", **capped), name="worker-survivor")

    # Both must be reading before the tasks arrive, or the first could take them all.
    await wait_until(
        "both workers consume", lambda: {"doomed", "survivor"} <= consumers(server), timeout=45
    )
    prompts: dict[str, str] = {}
    for index in range(8):
        prompt = prompt_of(index, words=4)
        task = await client.submit(
            prompt, latency_ms=2500, priority=("high", "normal", "low")[index % 3]
        )
        prompts[task["id"]] = prompt

    def both_busy() -> bool:
        pending = pending_by_consumer(server)
        return pending.get("doomed", 0) > 0 and pending.get("survivor", 0) > 0

    await wait_until("both workers hold tasks", both_busy, timeout=45)
    # Clients follow every task live over SSE through the crash.
    followers = {
        task_id: asyncio.create_task(client.sse(task_id, timeout=90)) for task_id in prompts
    }
    held = pending_by_consumer(server)["doomed"]
    doomed.kill()  # SIGKILL: no hand-back, no goodbye; only the lease expiring frees its tasks
    # (and its share of the cap: the survivor could not run more than 6 - held meanwhile)

    done = await client.wait_all(list(prompts), timeout=90)
    check_answers(done, prompts)
    retried = [task for task in done.values() if task["attempts"] >= 2]
    assert len(retried) >= held >= 1, (held, [t["attempts"] for t in done.values()])
    assert survivor.alive()

    # Each live stream ended with the answer; a retried task's stream says so: a status for
    # the new attempt, then the result of that attempt.
    streams = dict(zip(followers, await asyncio.gather(*followers.values()), strict=True))
    for task_id, events in streams.items():
        task = done[task_id]
        ids = [int(event.id) for event in events]
        assert ids == sorted(set(ids)), ids
        assert events[-1].event == "result", events
        assert events[-1].data["text"] == prompts[task_id]
        assert events[-1].data["attempt"] == task["attempts"]
        assert prompts[task_id].startswith(final_attempt_text(events))
        if task["attempts"] >= 2:
            statuses = [e.data["attempt"] for e in events if e.event == "status"]
            assert max(statuses) == task["attempts"], events


# ---- 4. Redis down and back ---------------------------------------------------------------


async def expect_unavailable(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await response.json(content_type=None)
    assert response.status == 503, body
    assert response.headers.get("Retry-After"), dict(response.headers)
    return body


async def test_api_answers_503_while_redis_is_down_and_recovers_by_itself(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    server = redis_server_factory(appendonly=True)
    api, client = await start_api(services, session, api_env(server))
    worker = services.worker(worker_env(server, "w1"))
    warm = await client.submit("before the outage")
    assert (await client.wait_done(warm["id"], timeout=60))["status"] == "succeeded"
    # Accepted just before Redis dies: AOF (fsync always) keeps them, so they must still
    # finish: four run (the worker's slots), two wait in the fair waiting room, low and high.
    accepted = [
        await client.submit(f"accepted before the crash {n}", latency_ms=1000, priority=p)
        for n, p in enumerate(["normal", "low", "high", "normal", "low", "high"])
    ]
    with redis.Redis.from_url(server.url) as raw:
        assert int(raw.get(f"{TASKS_STREAM}:fair:n") or 0) >= 1  # some not yet dispatched

    server.kill()

    # Several submissions while Redis is down: each a quick 503 problem, never 500 or 202.
    for attempt in range(3):
        started = time.monotonic()
        async with session.post(
            f"{api.url}/v1/tasks",
            json={"prompt": f"during the outage {attempt}", "model": "echo"},
            headers=client.headers,
            timeout=aiohttp.ClientTimeout(total=30),  # a hang guard, not a timing assertion
        ) as response:
            body = await expect_unavailable(response)
            assert response.content_type == "application/problem+json"
            assert body["status"] == 503
        print(f"POST during the outage answered in {time.monotonic() - started:.2f}s")
    async with session.get(
        f"{api.url}/health", timeout=aiohttp.ClientTimeout(total=30)
    ) as response:
        health = await expect_unavailable(response)
        assert health["status"] != "ok"
    async with session.get(
        f"{api.url}/v1/tasks/{warm['id']}",
        headers=client.headers,
        timeout=aiohttp.ClientTimeout(total=30),
    ) as response:
        await expect_unavailable(response)

    server.start()  # same port, same directory: the AOF brings the data back

    accepted_after: list[dict[str, Any]] = []

    async def accepts_again() -> bool:
        status, _, body = await client.post_task("after the outage")
        assert status in (202, 503), (status, body)  # never 500 on the way back
        if status == 202:
            accepted_after.append(body)
        return status == 202

    await wait_until("the API accepts tasks again", accepts_again, timeout=60, interval=0.5)
    after = accepted_after[0]
    finished = await client.wait_done(after["id"], timeout=60)
    assert finished["status"] == "succeeded"
    assert finished["result"]["text"] == "after the outage"
    for n, task in enumerate(accepted):
        survived = await client.wait_done(task["id"], timeout=60)
        assert survived["status"] == "succeeded", survived
        assert survived["result"]["text"] == f"accepted before the crash {n}"
        assert survived["priority"] == task["priority"]
    async with session.get(f"{api.url}/health") as response:
        assert response.status == 200
    assert api.alive()
    assert worker.alive()


# ---- 9. graceful shutdown -----------------------------------------------------------------


async def test_sigterm_lets_a_workers_in_flight_tasks_finish(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    server = redis_server_factory()
    _, client = await start_api(services, session, api_env(server))
    worker = services.worker(worker_env(server, "w1", SHUTDOWN_GRACE_SECONDS="20"))
    prompts = {}
    for index in range(3):
        task = await client.submit(prompt_of(index), latency_ms=2000)
        prompts[task["id"]] = prompt_of(index)
    await wait_running(client, list(prompts))

    worker.signal(signal.SIGTERM)

    assert await worker.wait_exit(timeout=40) == 0, worker.tail()
    # The only worker is gone: the tasks finished in it, within its grace period.
    done = await client.wait_all(list(prompts), timeout=30)
    check_answers(done, prompts)
    assert all(task["attempts"] == 1 for task in done.values())


async def test_sigterm_hands_unfinished_tasks_back_to_another_worker(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    server = redis_server_factory()
    _, client = await start_api(services, session, api_env(server))
    leaving = services.worker(
        worker_env(server, "leaving", SHUTDOWN_GRACE_SECONDS="0.5"), name="worker-leaving"
    )
    prompts = {}
    for index in range(3):
        task = await client.submit(prompt_of(index), latency_ms=5000)
        prompts[task["id"]] = prompt_of(index)
    await wait_running(client, list(prompts))
    taker = services.worker(worker_env(server, "taker"), name="worker-taker")

    leaving.signal(signal.SIGTERM)  # grace 0.5 s < 5 s of work: the tasks are handed back

    assert await leaving.wait_exit(timeout=30) == 0, leaving.tail()
    done = await client.wait_all(list(prompts), timeout=60)
    check_answers(done, prompts)
    assert all(task["attempts"] >= 2 for task in done.values()), list(done.values())
    assert taker.alive()


async def test_sigterm_to_the_api_ends_open_streams_and_exits_0(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    server = redis_server_factory()
    api, client = await start_api(services, session, api_env(server))
    task = await client.submit("nobody will run me")  # no worker: the task stays queued

    sse_events: list[Event] = []
    ws_frames: list[str] = []
    sse_open, ws_open = asyncio.Event(), asyncio.Event()

    async def read_sse() -> None:
        async with contextlib.aclosing(client.sse_stream(task["id"], timeout=60)) as stream:
            async for event in stream:
                sse_events.append(event)
                sse_open.set()

    async def read_ws() -> int | None:
        async with session.ws_connect(
            f"{api.url}/v1/tasks/{task['id']}/ws", headers=client.headers
        ) as ws:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    ws_frames.append(message.data)
                    ws_open.set()
            return ws.close_code

    sse_reader = asyncio.create_task(read_sse())
    ws_reader = asyncio.create_task(read_ws())
    async with asyncio.timeout(30):  # both streams are open: each has sent the queued status
        await sse_open.wait()
        await ws_open.wait()

    api.signal(signal.SIGTERM)

    async with asyncio.timeout(30):  # hang guard: the streams must end by themselves
        await sse_reader
        close_code = await ws_reader
    assert [e.event for e in sse_events] == ["status"]
    assert len(ws_frames) == 1
    assert close_code == 1001  # going away
    assert await api.wait_exit(timeout=30) == 0, api.tail()


async def test_api_answers_503_while_redis_hangs_and_recovers_when_it_resumes(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP: a frozen host, a full
    network buffer) must not hang requests: the API times out and answers 503."""
    server = redis_server_factory(appendonly=True)
    api, client = await start_api(services, session, api_env(server))
    services.worker(worker_env(server, "w1"))
    warm = await client.submit("before the freeze")
    assert (await client.wait_done(warm["id"], timeout=60))["status"] == "succeeded"
    assert server.process is not None
    redis_pid = server.process.pid

    os.kill(redis_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        async with session.post(
            f"{api.url}/v1/tasks",
            json={"prompt": "during the freeze", "model": "echo"},
            headers=client.headers,
            timeout=aiohttp.ClientTimeout(total=45),  # a hang guard, not a timing assertion
        ) as response:
            body = await expect_unavailable(response)
            assert response.content_type == "application/problem+json", body
        print(f"POST during the freeze answered in {time.monotonic() - started:.2f}s")
        async with session.get(
            f"{api.url}/health", timeout=aiohttp.ClientTimeout(total=45)
        ) as response:
            await expect_unavailable(response)
    finally:
        os.kill(redis_pid, signal.SIGCONT)

    accepted_after: list[dict[str, Any]] = []

    async def accepts_again() -> bool:
        status, _, body = await client.post_task("after the freeze")
        assert status in (202, 503), (status, body)
        if status == 202:
            accepted_after.append(body)
        return status == 202

    await wait_until("the API accepts tasks again", accepts_again, timeout=60, interval=0.5)
    finished = await client.wait_done(accepted_after[0]["id"], timeout=60)
    assert finished["result"]["text"] == "after the freeze"


async def test_a_stream_ended_by_api_shutdown_resumes_on_another_replica_without_loss(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    server = redis_server_factory()
    leaving, first_api = await start_api(services, session, api_env(server))
    _, second_api = await start_api(services, session, api_env(server))
    services.worker(worker_env(server, "w1"))
    prompt = " ".join(f"w{n}" for n in range(50))  # ~4 s of streaming
    task = await first_api.submit(prompt, latency_ms=200, chunk_delay_ms=80)

    before: list[Event] = []
    async with contextlib.aclosing(first_api.sse_stream(task["id"], timeout=60)) as stream:
        async for event in stream:
            before.append(event)
            if sum(e.event == "delta" for e in before) == 2:
                leaving.signal(signal.SIGTERM)  # the server ends the stream; we read to EOF
    assert before[-1].event != "result", "the answer ended before the API was stopped"

    after = await second_api.sse(task["id"], last_event_id=before[-1].id, timeout=60)
    joined = before + after
    assert joined == await second_api.sse(task["id"], timeout=30)
    assert joined[-1].event == "result"
    assert joined[-1].data["text"] == prompt
    assert prompt.startswith(final_attempt_text(joined))
    assert await leaving.wait_exit(timeout=30) == 0, leaving.tail()
