"""Cancellation end to end: real ``ai-orchestrator api`` and ``worker`` processes on a
throwaway redis-server, a fake OpenAI that holds its answer stream open for half a minute.
A cancel stops the running call (the fake sees its stream closed), frees the worker's slot,
and ends the task ``cancelled`` with the text so far; a task cancelled while queued never
reaches the provider; a finished task refuses (409), another tenant's is a 404."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.e2e.support import Api, Services, clean_env, wait_healthy, wait_until
from tests.support.fake_llm import FakeLLM, Reply
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEY = "e2e-cancel-key-0123456789abcdef"
OTHER = "e2e-cancel-other-0123456789abcd"
MODEL = "openai/gpt-4o-mini"
#: About 30 s of answer, a word every 0.1 s.
LONG = Reply.answer(*(f"w{i} " for i in range(300)), chunk_delay=0.1)


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = FakeLLM()
    await server.start()
    yield server
    await server.close()


async def post(client: Api, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with client.session.post(
        f"{client.base}{path}", headers=headers or client.headers
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_a_cancel_stops_the_call_and_a_queued_task_never_runs(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    server = redis_server_factory()
    fake.default = LONG
    api = services.api(clean_env(REDIS_URI=server.url, API_KEYS=f"acme:{KEY},globex:{OTHER}"))
    services.worker(
        clean_env(
            REDIS_URI=server.url,
            OPENAI_BASE_URL=fake.openai_base_url,
            OPENAI_API_KEY="sk-fake",
            NUMBER_OF_WORKERS="1",  # one slot: the second task waits in the queue
            DELTA_FLUSH_MS="50",
        )
    )
    await wait_healthy(session, api)
    assert api.url is not None
    client = Api(session, api.url, KEY)

    async def worker_alive() -> bool:
        async with session.get(f"{client.base}/health") as response:
            return bool((await response.json())["workers"])

    await wait_until("a worker advertises", worker_alive, timeout=30)
    running = (await client.submit("long", model=MODEL))["id"]
    queued = (await client.submit("waits", model=MODEL))["id"]

    async def streaming() -> bool:
        _, task = await client.get(running)
        return bool(task["status"] == "running" and len(fake.requests) == 1)

    await wait_until("the first task streams", streaming, timeout=30)

    # The queued one first: it never reaches the provider.
    status, body = await post(client, f"/v1/tasks/{queued}/cancel")
    assert (status, body["status"], body["started_at"]) == (202, "cancelled", None)
    status, body = await post(
        client, f"/v1/tasks/{running}/cancel", {"Authorization": f"Bearer {OTHER}"}
    )
    assert status == 404  # another tenant's
    status, body = await post(client, f"/v1/tasks/{running}/cancel")
    assert status == 202

    done = await client.wait_done(running, timeout=30)
    assert done["status"] == "cancelled"
    assert done["partial_text"].startswith("w0 ")
    assert done["result"] is None
    await wait_until("the provider's stream closed", lambda: fake.disconnected, timeout=30)
    # The slot is free: the next task runs (the queued one was skipped, never called).
    fake.default = Reply.answer("quick")
    after = (await client.submit("after", model=MODEL))["id"]
    finished = await client.wait_done(after, timeout=30)
    assert finished["status"] == "succeeded"
    prompts = [r.body["messages"][-1]["content"] for r in fake.requests if r.body]
    assert prompts == ["long", "after"]
    status, body = await post(client, f"/v1/tasks/{after}/cancel")
    assert status == 409
    status, body = await post(client, f"/v1/tasks/{running}/cancel")
    assert (status, body["status"]) == (202, "cancelled")  # repeating is harmless
