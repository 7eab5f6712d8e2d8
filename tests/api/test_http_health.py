"""GET /health: 200 while the broker and the store answer, 503 naming the one that does not."""

from __future__ import annotations

import asyncio

from orchestrator_api.store.memory import MemoryTaskStore
from orchestrator_broker import BrokerUnavailable
from orchestrator_broker.memory import MemoryBroker
from tests.api.conftest import ApiClientFactory


class UnreachableBroker(MemoryBroker):
    async def ping(self) -> None:
        raise BrokerUnavailable("connection refused")


class HangingStore(MemoryTaskStore):
    async def ping(self) -> None:
        await asyncio.Event().wait()


async def test_health_is_ok_when_everything_answers(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.get("/health")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"broker": "ok", "store": "ok"}
    assert body["service"] == "ai-orchestrator_api"


async def test_health_is_503_naming_an_unreachable_broker(api_client: ApiClientFactory) -> None:
    client = await api_client(broker=UnreachableBroker())
    response = await client.get("/health")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"broker": "unavailable", "store": "ok"}


async def test_health_is_503_when_the_store_does_not_answer_in_time(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client(store=HangingStore(60))
    response = await client.get("/health")
    assert response.status == 503
    assert (await response.json())["checks"] == {"broker": "ok", "store": "unavailable"}
