"""Worker presence on real processes: ``ai-orchestrator api`` and two ``worker`` processes on
a throwaway redis-server. The workers advertise what they serve; ``/v1/models`` and
``/health`` show it; a SIGKILLed worker drops out once its short TTL runs out; a model no live
worker serves is a 400 at submit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.e2e.support import Api, Services, clean_env, wait_healthy, wait_until
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEY = "e2e-presence-key-0123456789abcdef"


def worker_env(server: RedisServer, name: str, **extra: str) -> dict[str, str]:
    return clean_env(
        REDIS_URI=server.url,
        APP_ID="e2e-presence-worker",
        CONSUMER_NAME=name,
        # Short, so the killed worker drops out soon; not shorter: on a loaded machine a
        # renewal (every third of it) may come late, and a live worker would blink out.
        PRESENCE_TTL_SECONDS="3",
        MODEL_ALIASES="fast=echo",
        METRICS_PORT="0",
        **extra,
    )


async def get_json(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10), **kwargs) as response:
        return response.status, await response.json()


async def test_models_and_health_follow_the_live_workers(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    server = redis_server_factory()
    api = services.api(
        clean_env(REDIS_URI=server.url, API_KEYS=f"presence:{KEY}", APP_ID="e2e-presence-api")
    )
    await wait_healthy(session, api)
    client = Api(session, str(api.url), KEY)
    auth = {"headers": client.headers}

    # No worker yet: nothing listed, any model is accepted and queued.
    assert (await get_json(session, f"{api.url}/health"))[1]["workers"] == 0
    status, _, _ = await client.post_task("early", model="anthropic/claude")
    assert status == 202

    # Workers of one tasks stream share its tasks, so they share their aliases too.
    services.worker(worker_env(server, "w-kept"), name="worker-kept")
    doomed = services.worker(worker_env(server, "w-doomed", DEFAULT_MODEL="echo/doomed"))

    async def both_listed() -> bool:
        _, listing = await get_json(session, f"{api.url}/v1/models", **auth)
        return {m["id"] for m in listing["data"]} == {"echo", "fast", "echo/doomed"}

    await wait_until("both workers listed", both_listed, timeout=60)

    async def both_alive() -> bool:
        return bool((await get_json(session, f"{api.url}/health"))[1]["workers"] == 2)

    await wait_until("both workers alive", both_alive, timeout=30)
    status, model = await get_json(session, f"{api.url}/v1/models/fast", **auth)
    assert (status, model["object"], model["owned_by"]) == (200, "model", "ai-orchestrator")

    # A worker is alive now: an unserved model is refused at submit, naming the field.
    status, _, problem = await client.post_task("x", model="anthropic/claude")
    assert status == 400
    assert [e["field"] for e in problem["errors"]] == ["model"]
    done = await client.wait_done((await client.submit("served", model="fast"))["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["text"] == "served"

    # SIGKILL: no withdrawal; the advert expires after PRESENCE_TTL_SECONDS.
    doomed.kill()

    async def one_left() -> bool:
        _, health = await get_json(session, f"{api.url}/health")
        return bool(health["workers"] == 1)

    await wait_until("the killed worker dropped out", one_left, timeout=60)
    _, listing = await get_json(session, f"{api.url}/v1/models", **auth)
    assert {m["id"] for m in listing["data"]} == {"echo", "fast"}
    status, _ = await get_json(session, f"{api.url}/v1/models/echo/doomed", **auth)
    assert status == 200  # still served: echo's prefix, by the other worker
