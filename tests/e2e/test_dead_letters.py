"""An outage leaves dead letters, and an operator replays them (doc/operations.md): real
``ai-orchestrator api`` and ``worker`` processes on a throwaway redis-server, a fake OpenAI
that fails every call during the "outage" and answers afterwards, and the real
``ai-orchestrator dead-letters`` command."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from tests.e2e.support import (
    Api,
    Services,
    clean_env,
    final_attempt_text,
    prompt_of,
    wait_healthy,
    wait_until,
)
from tests.e2e.test_cli import run_cli
from tests.support.fake_llm import FakeLLM, Reply
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEY = "e2e-dead-letters-key-0123456789"
MODEL = "openai/gpt-4o-mini"


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = FakeLLM()
    await server.start()
    yield server
    await server.close()


async def listed(client: Api, query: str = "") -> dict[str, Any]:
    async with client.session.get(
        f"{client.base}/v1/tasks{query}", headers=client.headers
    ) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_tasks_dead_lettered_by_an_outage_run_again_when_replayed(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
    fake: FakeLLM,
) -> None:
    server = redis_server_factory()
    fake.default = Reply.error(503, message="the provider is down")  # the outage
    api = services.api(clean_env(REDIS_URI=server.url, API_KEYS=f"ops:{KEY}"))
    services.worker(
        clean_env(
            REDIS_URI=server.url,
            OPENAI_BASE_URL=fake.openai_base_url,
            OPENAI_API_KEY="sk-fake",
            MAX_ATTEMPTS="2",
            RETRY_BASE_SECONDS="0.05",
            RETRY_MAX_SECONDS="0.1",
            BREAKER_FAILURES="0",
            NUMBER_OF_WORKERS="4",
        )
    )
    await wait_healthy(session, api)
    assert api.url is not None
    client = Api(session, api.url, KEY)

    async def worker_alive() -> bool:
        async with session.get(f"{client.base}/health") as response:
            return bool((await response.json())["workers"])

    await wait_until("a worker advertises", worker_alive, timeout=30)

    prompts = {}
    for n in range(3):
        task = await client.submit(prompt_of(n, words=3), model=MODEL)
        prompts[task["id"]] = prompt_of(n, words=3)
    failed = await client.wait_all(prompts, timeout=60)
    assert {t["status"] for t in failed.values()} == {"failed"}
    assert {t["attempts"] for t in failed.values()} == {2}

    # The operator looks at what the outage left...
    env = clean_env(REDIS_URI=server.url)
    shown = await run_cli(["dead-letters", "list", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    letters = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert {letter["task_id"] for letter in letters} == set(prompts)
    assert {(letter["tenant"], letter["delivery_count"]) for letter in letters} == {("ops", 2)}

    # ... and once the provider is back, replays one task, then all the others.
    fake.default = Reply()  # echoes each prompt back, word by word
    first, *others = prompts
    replayed = await run_cli(["dead-letters", "replay", first], env)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == f"replayed {first} (attempts so far: 2)\n"

    # A client following the task from the start sees it fail, then run again to the end.
    events = await client.sse(first)
    kinds = [(e.event, e.data.get("status"), e.data["attempt"]) for e in events]
    assert ("error", None, 2) in kinds
    assert kinds[kinds.index(("error", None, 2)) + 1] == ("status", "queued", 2)
    assert kinds[-1] == ("result", None, 3)
    # (A short answer may come in the result alone, without deltas.)
    assert final_attempt_text(events) in ("", prompts[first])
    assert events[-1].data["text"] == prompts[first]
    done = await client.wait_done(first)
    assert (done["status"], done["attempts"]) == ("succeeded", 3)
    assert done["result"]["text"] == prompts[first]

    replayed_all = await run_cli(["dead-letters", "replay", "--all"], env)
    assert replayed_all.returncode == 0, replayed_all.stderr
    assert sorted(replayed_all.stdout.splitlines()) == sorted(
        f"replayed {task_id} (attempts so far: 2)" for task_id in others
    )
    finished = await client.wait_all(prompts, timeout=60)
    for task_id, task in finished.items():
        assert (task["status"], task["result"]["text"]) == ("succeeded", prompts[task_id])

    left = await run_cli(["dead-letters", "list"], env)
    assert (left.returncode, left.stdout) == (0, "")
    succeeded = await listed(client, "?status=succeeded")
    assert {task["id"] for task in succeeded["data"]} == set(prompts)
    assert (await listed(client, "?status=failed"))["data"] == []
