"""``POST /v1/tasks/{id}/cancel`` over HTTP: 202 with the task, its cancel flag raised for
the workers; 404 for another tenant's or an unknown task, 409 once it has finished, 503 when
the broker cannot take the flag; repeating it is harmless; the events stream ends with
``cancelled``."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient

from orchestrator_broker import BrokerUnavailable, MemoryBroker
from orchestrator_tasks import CANCEL_FLAGS
from orchestrator_tasks.messages import EventKind, ResultEvent
from tests.api.conftest import ACME, GLOBEX, ApiClientFactory, api_state
from tests.api.test_http_openapi import Checked, fetch_document, validator
from tests.api.test_http_streaming import read_sse
from tests.api.test_http_tasks import problem_of

Client = TestClient[Any, Any]


async def submitted(client: Client, **body: Any) -> str:
    response = await client.post("/v1/tasks", json={"prompt": "x", **body}, headers=ACME)
    assert response.status == 202
    task_id: str = (await response.json())["id"]
    return task_id


async def test_a_queued_task_is_cancelled_and_the_workers_are_told(
    api_client: ApiClientFactory,
) -> None:
    broker = MemoryBroker()
    client = await api_client(broker=broker)
    task_id = await submitted(client)

    response = await client.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)

    assert response.status == 202
    body = await response.json()
    assert (body["id"], body["status"], body["started_at"]) == (task_id, "cancelled", None)
    assert body["partial_text"] is None
    assert await broker.raised_flags(CANCEL_FLAGS, [task_id]) == {task_id}
    shown = await (await client.get(f"/v1/tasks/{task_id}", headers=ACME)).json()
    assert shown["status"] == "cancelled"
    again = await client.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)
    assert again.status == 202  # harmless
    assert (await again.json())["status"] == "cancelled"
    stream = await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)
    text = await stream.text()
    assert text.rstrip().splitlines()[-2] == "event: cancelled"  # and the stream ended


async def test_a_running_task_ends_cancelled_with_its_partial_text(
    api_client: ApiClientFactory,
) -> None:
    broker = MemoryBroker()
    client = await api_client(broker=broker)
    task_id = await submitted(client)
    store = api_state(client).store

    def event(kind: EventKind, seq: int, text: str = "") -> ResultEvent:
        return ResultEvent(task_id, "acme", kind, attempt=1, seq=seq, at=time.time(), text=text)

    await store.apply(event(EventKind.STARTED, 0))
    await store.apply(event(EventKind.DELTA, 1, "Hel"))

    response = await client.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)
    assert response.status == 202
    assert (await response.json())["status"] == "running"  # until its worker stops it
    assert await broker.raised_flags(CANCEL_FLAGS, [task_id]) == {task_id}

    await store.apply(event(EventKind.CANCELLED, 2, "Hello"))
    shown = await (await client.get(f"/v1/tasks/{task_id}", headers=ACME)).json()
    assert (shown["status"], shown["partial_text"], shown["result"]) == (
        "cancelled",
        "Hello",
        None,
    )


async def test_cancel_refuses_finished_foreign_and_unknown_tasks(
    api_client: ApiClientFactory,
) -> None:
    broker = MemoryBroker()
    client = await api_client(broker=broker)
    task_id = await submitted(client)

    await problem_of(await client.post(f"/v1/tasks/{task_id}/cancel", headers=GLOBEX), 404)
    await problem_of(await client.post("/v1/tasks/nope/cancel", headers=ACME), 404)
    await problem_of(await client.post(f"/v1/tasks/{'x' * 500}/cancel", headers=ACME), 404)
    assert (await client.post(f"/v1/tasks/{task_id}/cancel")).status == 401
    assert await broker.raised_flags(CANCEL_FLAGS, [task_id]) == set()

    await api_state(client).store.apply(
        ResultEvent(task_id, "acme", EventKind.SUCCEEDED, 1, 0, time.time(), text="done")
    )
    problem = await problem_of(await client.post(f"/v1/tasks/{task_id}/cancel", headers=ACME), 409)
    assert problem["type"] == "urn:ai-orchestrator:problem:task-finished"
    assert "succeeded" in problem["detail"]


class FlaglessBroker(MemoryBroker):
    async def raise_flag(self, group: str, name: str, ttl: float) -> None:
        raise BrokerUnavailable("down for the test")


async def test_a_flag_the_broker_cannot_take_is_a_503_and_the_cancel_can_be_repeated(
    api_client: ApiClientFactory,
) -> None:
    broker = FlaglessBroker()
    client = await api_client(broker=broker)
    task_id = await submitted(client)

    problem = await problem_of(await client.post(f"/v1/tasks/{task_id}/cancel", headers=ACME), 503)
    assert "not cancelled" in problem["detail"]


async def test_cancel_responses_match_the_document(api_client: ApiClientFactory) -> None:
    client = await api_client()
    call = Checked(client, await fetch_document(client))
    task_id = await submitted(client)
    template = "/v1/tasks/{task_id}/cancel"

    await call("POST", template, f"/v1/tasks/{task_id}/cancel", headers=ACME)
    await call("POST", template, "/v1/tasks/nope/cancel", headers=ACME)
    finished = await submitted(client)
    await api_state(client).store.apply(
        ResultEvent(finished, "acme", EventKind.FAILED, 1, 0, time.time())
    )
    await call("POST", template, f"/v1/tasks/{finished}/cancel", headers=ACME)
    await call("GET", "/v1/tasks/{task_id}", f"/v1/tasks/{task_id}", headers=ACME)
    assert {(s[1], s[2]) for s in call.seen} >= {(template, 202), (template, 404), (template, 409)}


async def test_the_cancelled_event_matches_the_task_event_schema(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    document = await fetch_document(client)
    task_id = await submitted(client)
    assert (await client.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)).status == 202
    event_schema = validator(document, {"$ref": "#/components/schemas/TaskEvent"})

    sse = await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)
    blocks = [b for b in await read_sse(sse) if "event" in b]
    assert [b["event"] for b in blocks] == ["status", "cancelled"]
    for block in blocks:
        event_schema.validate({k: block[k] for k in ("id", "event", "data")})
    ws = await client.ws_connect(f"/v1/tasks/{task_id}/ws", headers=ACME)
    frames = [orjson.loads(m.data) async for m in ws if m.type is aiohttp.WSMsgType.TEXT]
    assert [f["event"] for f in frames] == ["status", "cancelled"]
    for frame in frames:
        event_schema.validate(frame)
