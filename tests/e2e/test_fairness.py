"""Fair shares on real processes: ``ai-orchestrator api`` and ``worker`` on a throwaway
redis-server. Tenant A floods the queue, tenant B submits a few tasks after; B's tasks
overtake A's backlog instead of waiting behind it (orders asserted, not timings).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.e2e.support import Api, Services, clean_env, wait_healthy
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEY_A = "e2e-fair-key-a-0123456789abcdef"
KEY_B = "e2e-fair-key-b-0123456789abcdef"
FLOOD = 40


async def test_another_tenants_tasks_overtake_a_flood(
    redis_server_factory: Callable[..., RedisServer],
    services: Services,
    session: aiohttp.ClientSession,
) -> None:
    server = redis_server_factory()
    api = services.api(
        clean_env(REDIS_URI=server.url, API_KEYS=f"a:{KEY_A},b:{KEY_B}", APP_ID="e2e-fair-api")
    )
    await wait_healthy(session, api)
    a, b = Api(session, str(api.url), KEY_A), Api(session, str(api.url), KEY_B)
    flood = [(await a.submit(f"a{i}", latency_ms=50))["id"] for i in range(FLOOD)]
    late = [(await b.submit(f"b{i}", latency_ms=50))["id"] for i in range(3)]
    urgent = await a.submit("a-urgent", latency_ms=50, priority="high")
    # One worker, two slots, started once everything waits: FIFO would run all of A's first.
    services.worker(
        clean_env(REDIS_URI=server.url, NUMBER_OF_WORKERS="2", METRICS_PORT="0"),
        name="worker",
    )
    done_b = await b.wait_all(late, timeout=120)
    done_a = await a.wait_all([*flood, urgent["id"]], timeout=240)
    last_b = max(finished(task) for task in done_b.values())
    a_before = sum(1 for i in flood if finished(done_a[i]) < last_b)
    # B's three alternate with A's: a handful of A's tasks finish first, not forty.
    assert a_before <= 10, a_before
    # Within A, the high-priority task (submitted last) overtakes A's own backlog.
    urgent_done = finished(done_a[urgent["id"]])
    assert sum(1 for i in flood if finished(done_a[i]) < urgent_done) <= 10
    assert done_a[urgent["id"]]["priority"] == "high"
    assert all(task["priority"] == "normal" for task in done_b.values())
    assert all(task["queue_wait"] is not None for task in done_b.values())


def finished(task: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(task["finished_at"])
