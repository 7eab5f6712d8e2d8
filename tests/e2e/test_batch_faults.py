"""A batch through a Redis crash: real ``api`` and ``worker`` processes on a private
redis-server with AOF (``appendfsync always``). Redis is SIGKILLed mid-batch and the API
with it; Redis comes back from its AOF, a new API process takes the batch over, and every
line ends up exactly once across the output and error files, with its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from tests.e2e.support import Services, clean_env, wait_healthy, wait_until
from tests.support.fake_llm import FakeLLM, Reply
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEY = "e2e-batch-faults-key-0123456789ab"
HEADERS = {"Authorization": f"Bearer {KEY}"}
LINES = 60


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = FakeLLM()
    await server.start()
    # Each answer echoes its prompt after 300 ms: 60 lines on 4 workers take ~5 s, so the
    # runner's harvests (every second at most) see the batch part-way, whatever the machine.
    server.default = Reply(chunks=None, delay=0.3, chunk_delay=0.02)
    yield server
    await server.close()


def _input() -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"q{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "openai/gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"answer number {n}"}],
                },
            }
        )
        + b"\n"
        for n in range(LINES)
    )


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with session.get(url, headers=HEADERS) as response:
            return response.status, await response.json(content_type=None)
    except aiohttp.ClientError as exc:
        return 0, str(exc)


async def _lines(session: aiohttp.ClientSession, base: str, file_id: str | None) -> list[Any]:
    if file_id is None:
        return []
    async with session.get(f"{base}/v1/files/{file_id}/content", headers=HEADERS) as response:
        assert response.status == 200
        return [orjson.loads(raw) for raw in (await response.read()).splitlines()]


async def test_a_batch_survives_redis_and_its_api_being_killed(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    server = redis_server_factory(appendonly=True)
    api_env = clean_env(REDIS_URI=server.url, API_KEYS=f"acme:{KEY}")
    api = services.api(api_env, name="api-1")
    services.worker(
        clean_env(
            REDIS_URI=server.url,
            OPENAI_BASE_URL=fake.openai_base_url,
            OPENAI_API_KEY="sk-fake",
            NUMBER_OF_WORKERS="4",
            LEASE_SECONDS="2",
        )
    )
    await wait_healthy(session, api)
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", _input(), filename="in.jsonl", content_type="application/jsonl")
    async with session.post(f"{api.url}/v1/files", data=form, headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        uploaded = await response.json()
    body = {
        "input_file_id": uploaded["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    async with session.post(f"{api.url}/v1/batches", json=body, headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        batch_id = (await response.json())["id"]

    async def some_done() -> bool:
        status, batch = await _get(session, f"{api.url}/v1/batches/{batch_id}")
        assert status == 200, batch
        assert batch["status"] in ("validating", "in_progress"), batch
        return bool(batch["request_counts"]["completed"] >= 5)

    await wait_until("some lines answered", some_done, timeout=60, interval=0.05)

    server.kill()  # mid-batch: lines pending, tasks running and queued
    api.kill()
    await asyncio.sleep(0.5)
    server.start()  # same port and directory: the AOF brings every key back
    replacement = services.api(api_env, name="api-2")
    await wait_healthy(session, replacement)
    base = replacement.url
    assert base is not None

    finished: dict[str, Any] = {}

    async def batch_done() -> bool:
        status, batch = await _get(session, f"{base}/v1/batches/{batch_id}")
        if status != 200:
            return False
        finished.update(batch)
        return batch["status"] in ("completed", "failed", "cancelled", "expired")

    await wait_until("the batch finished", batch_done, timeout=120, interval=0.2)
    assert finished["status"] == "completed", finished
    output = await _lines(session, base, finished["output_file_id"])
    errors = await _lines(session, base, finished["error_file_id"])
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"q{n}" for n in range(LINES))  # each exactly once
    assert finished["request_counts"] == {
        "total": LINES,
        "completed": len(output),
        "failed": len(errors),
    }
    assert errors == [], errors[:3]
    for line in output:
        n = line["custom_id"].removeprefix("q")
        answer = line["response"]["body"]["choices"][0]["message"]["content"]
        assert answer == f"answer number {n}", line
