"""GET /openapi.json matches the API: its routes, and the real responses' statuses and bodies."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
from aiohttp.test_utils import TestClient

from orchestrator_api.config import ApiSettings
from orchestrator_api.model import TaskRecord, TaskStatus
from orchestrator_broker import BrokerUnavailable, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_tasks.messages import EventKind, ResultEvent
from tests.api.conftest import ACME, API_KEYS, ApiClientFactory, api_state
from tests.api.test_http_streaming import lifecycle, read_sse

Document = dict[str, Any]


async def fetch_document(client: TestClient[Any, Any]) -> Document:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document: Document = await response.json()
    return document


def validator(document: Document, schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for ``schema`` whose ``#/components/...`` refs resolve in ``document``."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def resolve(document: Document, node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_response(
    document: Document, method: str, template: str, status: int, content_type: str, body: Any
) -> None:
    """Assert the response is documented for the operation and its body fits the schema."""
    operation = document["paths"][template][method.lower()]
    assert str(status) in operation["responses"], f"{method} {template}: {status} undocumented"
    response = resolve(document, operation["responses"][str(status)])
    content = response.get("content", {})
    assert content_type in content, f"{method} {template} {status}: {content_type} undocumented"
    validator(document, content[content_type]["schema"]).validate(body)


class Checked:
    """Makes requests and checks every response against the document."""

    def __init__(self, client: TestClient[Any, Any], document: Document) -> None:
        self.client = client
        self.document = document
        self.seen: set[tuple[str, str, int]] = set()

    async def __call__(
        self, method: str, template: str, path: str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        response = await self.client.request(method, path or template, **kwargs)
        raw = await response.read()
        body = orjson.loads(raw) if raw else None
        check_response(
            self.document, method, template, response.status, response.content_type, body
        )
        header = response.headers.get("traceparent")
        if header is not None:
            schema = self.document["components"]["headers"]["traceparent"]["schema"]
            jsonschema.validate(header, schema)
        self.seen.add((method, template, response.status))
        return response.status, body


async def test_every_route_is_documented_and_every_documented_path_exists(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    document = await fetch_document(client)
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None
    }
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert routes == documented


def test_the_document_is_openapi_3_1_with_valid_schemas() -> None:
    from orchestrator_api.openapi import build_document

    document = build_document()
    assert document["openapi"].startswith("3.1.")
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for item in document["paths"].values():
        for operation in item.values():
            assert operation["responses"]
            assert "operationId" in operation


async def test_real_responses_match_the_document(api_client: ApiClientFactory) -> None:
    client = await api_client(settings=ApiSettings(api_keys=API_KEYS, max_prompt_chars=50))
    document = await fetch_document(client)
    call = Checked(client, document)
    store = api_state(client).store

    await call("GET", "/health")
    await call("GET", "/openapi.json")

    body = {"prompt": "x", "model": "echo", "parameters": {"latency_ms": 1}, "metadata": {}}
    keyed = {**ACME, "Idempotency-Key": "k1"}
    status, task = await call("POST", "/v1/tasks", json=body, headers=keyed)
    assert status == 202
    status, _ = await call("POST", "/v1/tasks", json=body, headers=keyed)
    assert status == 200
    status, _ = await call(
        "POST", "/v1/tasks", json={"prompt": "y"}, headers={**ACME, "Idempotency-Key": "k1"}
    )
    assert status == 422
    pending = TaskRecord(id="p1", tenant="acme", status=TaskStatus.QUEUED, created_at=time.time())
    await store.create(pending, "k2")  # its request is still publishing it
    status, _ = await call(
        "POST", "/v1/tasks", json={"prompt": "x"}, headers={**ACME, "Idempotency-Key": "k2"}
    )
    assert status == 409
    await call("POST", "/v1/tasks", json={"prompt": ""}, headers=ACME)  # 400 fields
    await call("POST", "/v1/tasks", data=b"{", headers={**ACME, "Content-Type": "application/json"})
    await call("POST", "/v1/tasks", json={"prompt": "x" * 51}, headers=ACME)  # 413
    await call("POST", "/v1/tasks", data=b"x", headers={**ACME, "Content-Type": "text/plain"})
    await call("POST", "/v1/tasks", json={"prompt": "x"})  # 401

    template = "/v1/tasks/{task_id}"
    task_path = f"/v1/tasks/{task['id']}"
    await call("GET", template, task_path, headers=ACME)  # queued
    for event in lifecycle(task["id"]):
        await store.apply(event)
    status, done = await call("GET", template, task_path, headers=ACME)
    assert done["status"] == "succeeded"
    await call("GET", template, "/v1/tasks/unknown", headers=ACME)  # 404
    await call("GET", template, task_path)  # 401

    status, listed = await call("GET", "/v1/tasks", "/v1/tasks?limit=1", headers=ACME)
    assert (status, listed["has_more"]) == (200, True)
    status, empty = await call("GET", "/v1/tasks", "/v1/tasks?status=running", headers=ACME)
    assert (status, empty["data"], empty["last_id"]) == (200, [], None)
    await call("GET", "/v1/tasks", "/v1/tasks?limit=0", headers=ACME)  # 400
    await call("GET", "/v1/tasks", "/v1/tasks?after=unknown", headers=ACME)  # 400
    await call("GET", "/v1/tasks")  # 401
    assert {(s[2]) for s in call.seen if s[:2] == ("GET", "/v1/tasks")} == {200, 400, 401}

    assert {(s[1], s[2]) for s in call.seen} >= {
        ("/health", 200),
        ("/v1/tasks", 202),
        ("/v1/tasks", 200),
        ("/v1/tasks", 400),
        ("/v1/tasks", 401),
        ("/v1/tasks", 409),
        ("/v1/tasks", 413),
        ("/v1/tasks", 422),
        ("/v1/tasks", 415),
        (template, 200),
        (template, 401),
        (template, 404),
    }


async def test_failed_tasks_503s_and_health_failures_match_the_document(
    api_client: ApiClientFactory,
) -> None:
    class DownBroker(MemoryBroker):
        async def publish(self, stream: str, message: Message, **options: Any) -> str:
            raise BrokerUnavailable("down")

        async def ping(self) -> None:
            raise BrokerUnavailable("down")

    client = await api_client(broker=DownBroker())
    document = await fetch_document(client)
    call = Checked(client, document)
    status, _ = await call("POST", "/v1/tasks", json={"prompt": "x"}, headers=ACME)
    assert status == 503
    status, health = await call("GET", "/health")
    assert status == 503
    assert health["checks"]["broker"] == "unavailable"

    record = await api_state(client).store.create(
        TaskRecord(id="t1", tenant="acme", status=TaskStatus.QUEUED, created_at=time.time())
    )
    await api_state(client).store.apply(
        ResultEvent(
            task_id=record.id,
            tenant="acme",
            kind=EventKind.FAILED,
            attempt=1,
            seq=0,
            at=time.time(),
        )
    )
    status, failed = await call("GET", "/v1/tasks/{task_id}", "/v1/tasks/t1", headers=ACME)
    assert failed["status"] == "failed"


async def test_streamed_events_match_the_task_event_schema(api_client: ApiClientFactory) -> None:
    client = await api_client()
    document = await fetch_document(client)
    response = await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)
    task_id = (await response.json())["id"]
    for event in lifecycle(task_id):
        await api_state(client).store.apply(event)
    event_schema = validator(document, {"$ref": "#/components/schemas/TaskEvent"})

    sse = await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)
    operation = document["paths"]["/v1/tasks/{task_id}/events"]["get"]
    assert sse.content_type in operation["responses"][str(sse.status)]["content"]
    blocks = [b for b in await read_sse(sse) if "event" in b]
    assert blocks
    for block in blocks:
        event_schema.validate({k: block[k] for k in ("id", "event", "data")})

    ws = await client.ws_connect(f"/v1/tasks/{task_id}/ws", headers=ACME)
    frames = [orjson.loads(m.data) async for m in ws if m.type is aiohttp.WSMsgType.TEXT]
    assert frames
    for frame in frames:
        event_schema.validate(frame)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": 42},
        {"prompt": "x", "model": 7},
        {"prompt": "x", "model": ""},
        {"prompt": "x", "parameters": "hot"},
        {"prompt": "x", "parameters": {"latency_ms": -1}},
        {"prompt": "x", "parameters": {"latency_ms": "5"}},
        {"prompt": "x", "metadata": 1},
        {"prompt": "x", "priority": "urgent"},
        {"prompt": "x", "urgency": "high"},
    ],
)
async def test_bodies_the_api_rejects_the_schema_rejects_too(
    api_client: ApiClientFactory, body: dict[str, Any]
) -> None:
    client = await api_client()
    document = await fetch_document(client)
    response = await client.post("/v1/tasks", json=body, headers=ACME)
    assert response.status == 400
    schema = validator(document, {"$ref": "#/components/schemas/TaskSubmission"})
    assert not schema.is_valid(body)


async def test_bodies_the_api_accepts_the_schema_accepts_too(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    document = await fetch_document(client)
    schema = validator(document, {"$ref": "#/components/schemas/TaskSubmission"})
    for body in (
        {"prompt": "x"},
        {"prompt": "x", "model": None, "system": None, "parameters": None, "metadata": None},
        {"prompt": "x", "parameters": {"latency_ms": 0, "temperature": 1}, "metadata": {"a": 1}},
    ):
        response = await client.post("/v1/tasks", json=body, headers=ACME)
        assert response.status == 202
        schema.validate(body)


async def test_the_websocket_operation_requires_the_upgrade_and_refuses_a_plain_get(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    document = await fetch_document(client)
    operation = document["paths"]["/v1/tasks/{task_id}/ws"]["get"]
    required = {p["name"] for p in operation["parameters"] if p.get("required")}
    assert {"Upgrade", "Connection", "Sec-WebSocket-Version", "Sec-WebSocket-Key"} <= required
    response = await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)
    task_id = (await response.json())["id"]

    plain = await client.get(f"/v1/tasks/{task_id}/ws", headers=ACME)

    assert plain.status == 400
    assert "400" in operation["responses"]
    assert plain.content_type == "application/problem+json"
