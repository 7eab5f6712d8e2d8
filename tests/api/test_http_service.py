"""serve(): the API as it runs for real, on loopback, on memory or on a throwaway Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider

from orchestrator_api.config import ApiSettings
from orchestrator_api.service import serve
from orchestrator_broker import ConsumeOptions, Fairness, RedisStreamsBroker
from tests.api.conftest import ACME, API_KEYS
from tests.support.redis_server import free_port

HANG = 30.0  # hang guard only


@contextlib.asynccontextmanager
async def running(
    settings: ApiSettings, **kwargs: Any
) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    """Run ``serve`` in a task; yields its base URL and the task, stops it on exit."""
    stop = asyncio.Event()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            settings,
            host="127.0.0.1",
            port=0,
            tracer_provider=TracerProvider(),
            stop=stop,
            on_started=started.set_result,
            **kwargs,
        )
    )
    try:
        url = await asyncio.wait_for(asyncio.shield(started), HANG)
        yield url, task
    finally:
        stop.set()
        await asyncio.wait_for(task, HANG)


async def test_serve_answers_over_loopback_and_logs_one_masked_startup_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator_api")
    settings = ApiSettings(api_keys=(("acme", "sekrit-key"),))
    async with running(settings) as (url, _), aiohttp.ClientSession() as session:
        async with session.get(f"{url}/health") as response:
            assert response.status == 200
        async with session.post(
            f"{url}/v1/tasks",
            json={"prompt": "x"},
            headers={"Authorization": "Bearer sekrit-key"},
        ) as response:
            assert response.status == 202
    startup = [r.getMessage() for r in caplog.records if "listening on" in r.getMessage()]
    assert len(startup) == 1
    assert url in startup[0]
    assert "in-memory" in startup[0]
    assert "sekrit" not in caplog.text


async def test_stop_ends_open_event_streams_and_serve_returns() -> None:
    settings = ApiSettings(api_keys=API_KEYS, shutdown_grace_seconds=5)
    stop = asyncio.Event()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    service = asyncio.create_task(
        serve(
            settings,
            host="127.0.0.1",
            port=0,
            tracer_provider=TracerProvider(),
            stop=stop,
            on_started=started.set_result,
        )
    )
    url = await asyncio.wait_for(started, HANG)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/tasks", json={"prompt": "x"}, headers=ACME) as r:
            task_id = (await r.json())["id"]
        async with session.get(f"{url}/v1/tasks/{task_id}/events", headers=ACME) as stream:
            assert stream.status == 200
            reader = asyncio.create_task(stream.content.read())
            await asyncio.sleep(0.1)
            assert not reader.done()  # idle stream, task still queued
            stop.set()  # as SIGTERM does
            body = await asyncio.wait_for(reader, HANG)  # the server ended the stream
    await asyncio.wait_for(service, HANG)
    assert b"event: status" in body


@pytest.mark.redis
async def test_serve_on_redis_publishes_to_the_tasks_stream_and_serves_the_task(
    redis_url: str,
) -> None:
    settings = ApiSettings(api_keys=API_KEYS, redis_uri=redis_url)
    async with running(settings) as (url, _), aiohttp.ClientSession() as session:
        async with session.get(f"{url}/health") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {"broker": "ok", "store": "ok"}
        async with session.post(
            f"{url}/v1/tasks",
            json={"prompt": "over redis", "model": "echo"},
            headers={**ACME, "Idempotency-Key": "r1"},
        ) as response:
            assert response.status == 202
            task = await response.json()
        async with session.post(
            f"{url}/v1/tasks",
            json={"prompt": "over redis", "model": "echo"},
            headers={**ACME, "Idempotency-Key": "r1"},
        ) as response:
            assert response.status == 200
            assert (await response.json())["id"] == task["id"]
        async with session.get(f"{url}/v1/tasks/{task['id']}", headers=ACME) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "queued"
        # Published keyed by tenant: it waits in the tasks stream's waiting room until a
        # consumer of the group asks, and reaches the stream then.
        broker = RedisStreamsBroker.from_url(redis_url)
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await broker.backlog("tasks", "workers") == 1
            await broker.ensure_group("tasks", "workers")
            options = ConsumeOptions(block=0.1, fairness=Fairness())
            consumer = broker.consume("tasks", "workers", "probe", options)
            async with asyncio.timeout(10):
                delivery = await anext(consumer)
            await delivery.ack()
            await consumer.aclose()
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange("tasks")  # type: ignore[assignment]
        finally:
            await client.aclose()
            await broker.close()
        assert len(entries) == 1
        fields = entries[0][1]
        payload = orjson.loads(fields[b"payload"])
        assert payload["task_id"] == task["id"]
        assert payload["messages"] == [{"role": "user", "content": "over redis", "name": None}]
        assert payload["priority"] == "normal"
        assert fields[b"fair_key"] == b"acme"
        assert b"traceparent" in fields  # the trace crosses the broker


async def test_the_api_command_logs_its_startup_line_serves_and_drains_on_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "API_KEYS": "acme:sekrit-key",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }
    env.pop("REDIS_URI", None)
    env.pop("JAEGER_URI", None)
    env.pop("EVENT_LOOP", None)  # auto: uvloop, a dependency
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator_cli",
            "api",
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + HANG
            while True:
                try:
                    async with session.get(f"{url}/health") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    assert process.returncode is None, log_path.read_text()
                    assert time.monotonic() < deadline, "the API did not start"
                    await asyncio.sleep(0.1)
            async with session.post(
                f"{url}/v1/tasks",
                json={"prompt": "x"},
                headers={"Authorization": "Bearer sekrit-key"},
            ) as response:
                assert response.status == 202
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), HANG)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert output.count("listening on") == 1
    assert f"127.0.0.1:{port}" in output
    assert "event loop uvloop" in output
    assert "sekrit" not in output


async def test_serve_starts_without_redis_and_answers_503_until_it_is_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="orchestrator_api")
    settings = ApiSettings(api_keys=API_KEYS, redis_uri=f"redis://127.0.0.1:{free_port()}/0")
    async with running(settings) as (url, _), aiohttp.ClientSession() as session:
        async with session.get(f"{url}/health") as response:
            assert response.status == 503
            assert (await response.json())["status"] == "unavailable"
        async with session.post(f"{url}/v1/tasks", json={"prompt": "x"}, headers=ACME) as r:
            assert r.status == 503
            assert r.content_type == "application/problem+json"
            assert "Retry-After" in r.headers
    assert "not reachable yet" in caplog.text
