"""The Files and Batches APIs over HTTP on the in-memory adapters: uploads, listings and
downloads per tenant; a batch's lines become the tenant's tasks, its answers the output and
error files (each line in exactly one), its counts follow the tasks; cancelling cancels the
unfinished tasks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import attrs
import orjson
from aiohttp.test_utils import TestClient

from orchestrator_api.batches import BATCH_API
from orchestrator_api.config import ApiSettings
from orchestrator_api.ratelimit import parse_rate_limits
from orchestrator_tasks.messages import ErrorInfo, EventKind, ResultEvent
from tests.api.conftest import ACME, GLOBEX, ApiClientFactory, api_state

Client = TestClient[Any, Any]


def line(custom_id: str, content: str = "Hi", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": content}],
            **body,
        },
    }


def jsonl(*items: Any) -> bytes:
    return b"".join(
        (item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in items
    )


async def upload(client: Client, data: bytes, headers: dict[str, str] = ACME) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", data, filename="in.jsonl", content_type="application/jsonl")
    response = await client.post("/v1/files", data=form, headers=headers)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def create(client: Client, file_id: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/batches",
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **extra,
        },
        headers=ACME,
    )
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def batch_of(client: Client, batch_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/batches/{batch_id}", headers=ACME)
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def until(client: Client, batch_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        batch = await batch_of(client, batch_id)
        if batch["status"] in statuses:
            return batch
        assert time.monotonic() < deadline, batch
        client.app[BATCH_API].runner.kick()
        await asyncio.sleep(0.02)


async def batch_tasks(client: Client, batch_id: str, count: int) -> dict[str, str]:
    """custom_id -> task id of the batch's tasks, once ``count`` of them exist."""
    deadline = time.monotonic() + 30
    while True:
        listed = await (await client.get("/v1/tasks?limit=100", headers=ACME)).json()
        found = {
            task["metadata"]["custom_id"]: task["id"]
            for task in listed["data"]
            if task["metadata"].get("batch_id") == batch_id
        }
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.02)


async def answer(client: Client, task_id: str, text: str) -> None:
    event = ResultEvent(
        task_id, "acme", EventKind.SUCCEEDED, 1, 0, time.time(), text=text, model="gpt-4o-mini"
    )
    assert await api_state(client).store.apply(event)


async def fail(client: Client, task_id: str) -> None:
    error = ErrorInfo(type="invalid_request", message="The provider refused it.")
    event = ResultEvent(task_id, "acme", EventKind.FAILED, 1, 0, time.time(), error=error)
    assert await api_state(client).store.apply(event)


async def content(client: Client, file_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/files/{file_id}/content", headers=ACME)
    assert response.status == 200
    return [orjson.loads(raw) for raw in (await response.read()).splitlines()]


async def test_a_file_is_uploaded_listed_read_and_deleted_by_its_tenant_only(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    data = jsonl(line("a"), line("b"))

    uploaded = await upload(client, data)

    assert uploaded["object"] == "file"
    assert (uploaded["bytes"], uploaded["purpose"], uploaded["filename"]) == (
        len(data),
        "batch",
        "in.jsonl",
    )
    assert uploaded["id"].startswith("file-")
    got = await (await client.get(f"/v1/files/{uploaded['id']}", headers=ACME)).json()
    assert got == uploaded
    listed = await (await client.get("/v1/files", headers=ACME)).json()
    assert [item["id"] for item in listed["data"]] == [uploaded["id"]]
    read = await client.get(f"/v1/files/{uploaded['id']}/content", headers=ACME)
    assert await read.read() == data
    assert (await client.get(f"/v1/files/{uploaded['id']}", headers=GLOBEX)).status == 404
    assert (await (await client.get("/v1/files", headers=GLOBEX)).json())["data"] == []
    deleted = await client.delete(f"/v1/files/{uploaded['id']}", headers=ACME)
    assert await deleted.json() == {"id": uploaded["id"], "object": "file", "deleted": True}
    assert (await client.get(f"/v1/files/{uploaded['id']}", headers=ACME)).status == 404


async def test_an_upload_over_the_limit_is_a_413_in_openais_shape_and_nothing_is_kept(
    api_client: ApiClientFactory, api_settings: Any
) -> None:
    from attrs import evolve

    client = await api_client(settings=evolve(api_settings, max_batch_file_bytes=1024))

    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", b"x" * 300_000, filename="big.jsonl")
    response = await client.post("/v1/files", data=form, headers=ACME)

    assert response.status == 413
    assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert (await (await client.get("/v1/files", headers=ACME)).json())["data"] == []


async def test_a_purpose_other_than_batch_is_a_400_naming_it(api_client: ApiClientFactory) -> None:
    client = await api_client()
    form = aiohttp.FormData()
    form.add_field("purpose", "fine-tune")
    form.add_field("file", b"{}\n", filename="x.jsonl")

    response = await client.post("/v1/files", data=form, headers=ACME)

    assert response.status == 400
    assert (await response.json())["error"]["param"] == "purpose"


async def test_each_line_becomes_a_task_and_the_answers_fill_the_output_and_error_files(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    uploaded = await upload(
        client,
        jsonl(line("ok-1", "one"), b"{not json", line("bad-2", stream=True), line("ko-3", "three")),
    )

    batch = await create(client, uploaded["id"], metadata={"run": "nightly"})

    assert batch["object"] == "batch"
    assert batch["status"] == "validating"
    assert batch["metadata"] == {"run": "nightly"}
    tasks = await batch_tasks(client, batch["id"], 2)
    assert set(tasks) == {"ok-1", "ko-3"}
    running = await until(client, batch["id"], "in_progress")
    assert running["request_counts"]["total"] == 4
    await answer(client, tasks["ok-1"], "Uno.")
    await fail(client, tasks["ko-3"])
    done = await until(client, batch["id"], "completed")
    assert done["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    assert done["completed_at"] is not None
    assert done["finalizing_at"] is not None
    (output,) = await content(client, done["output_file_id"])
    assert output["custom_id"] == "ok-1"
    assert output["error"] is None
    assert output["response"]["status_code"] == 200
    assert output["response"]["request_id"] == tasks["ok-1"]
    assert output["response"]["body"]["choices"][0]["message"]["content"] == "Uno."
    errors = await content(client, done["error_file_id"])
    assert [e["custom_id"] for e in errors] == [None, "bad-2", "ko-3"]  # in line order
    assert errors[0]["error"]["code"] == "invalid_json"
    assert errors[1]["response"] is None
    assert errors[2]["response"]["status_code"] == 400
    assert errors[2]["response"]["body"]["error"]["code"] == "invalid_request"
    info = await (await client.get(f"/v1/files/{done['output_file_id']}", headers=ACME)).json()
    assert info["purpose"] == "batch_output"


async def test_cancelling_a_batch_cancels_its_unfinished_tasks(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    uploaded = await upload(client, jsonl(line("a", "one"), line("b", "two")))
    batch = await create(client, uploaded["id"])
    tasks = await batch_tasks(client, batch["id"], 2)
    await until(client, batch["id"], "in_progress")
    await answer(client, tasks["a"], "first")

    response = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=ACME)

    assert response.status == 200
    assert (await response.json())["status"] in ("cancelling", "cancelled")
    done = await until(client, batch["id"], "cancelled")
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    shown = await (await client.get(f"/v1/tasks/{tasks['b']}", headers=ACME)).json()
    assert shown["status"] == "cancelled"
    (error,) = await content(client, done["error_file_id"])
    assert (error["custom_id"], error["error"]["code"]) == ("b", "batch_cancelled")
    assert [o["custom_id"] for o in await content(client, done["output_file_id"])] == ["a"]


async def test_batches_are_listed_newest_first_for_their_tenant_only(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    uploaded = await upload(client, jsonl(line("a")))
    first = await create(client, uploaded["id"])
    second = await create(client, uploaded["id"])

    listed = await (await client.get("/v1/batches?limit=1", headers=ACME)).json()
    rest = await (await client.get(f"/v1/batches?after={listed['last_id']}", headers=ACME)).json()

    assert [b["id"] for b in listed["data"]] == [second["id"]]
    assert listed["has_more"] is True
    assert [b["id"] for b in rest["data"]] == [first["id"]]
    assert (await (await client.get("/v1/batches", headers=GLOBEX)).json())["data"] == []
    assert (await client.get(f"/v1/batches/{first['id']}", headers=GLOBEX)).status == 404


async def test_a_batch_of_an_unknown_file_or_endpoint_is_a_400_naming_the_field(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    uploaded = await upload(client, jsonl(line("a")))
    for body, param in (
        ({"input_file_id": "file-nope"}, "input_file_id"),
        ({"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings"}, "endpoint"),
        ({"input_file_id": uploaded["id"], "completion_window": "1h"}, "completion_window"),
    ):
        full = {"endpoint": "/v1/chat/completions", "completion_window": "24h", **body}
        response = await client.post("/v1/batches", json=full, headers=ACME)
        assert response.status == 400
        assert (await response.json())["error"]["param"] == param


async def test_an_empty_file_fails_the_batch(api_client: ApiClientFactory) -> None:
    client = await api_client()
    uploaded = await upload(client, b"\n\n")

    batch = await create(client, uploaded["id"])

    failed = await until(client, batch["id"], "failed")
    assert failed["errors"]["data"][0]["code"] == "empty_file"
    assert failed["request_counts"]["total"] == 0


async def test_a_custom_id_on_two_lines_fails_the_batch_before_any_line_runs(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    data = jsonl(line("a"), line("b"), b"not json", line("a", "again"), line("c"), line("b"))
    uploaded = await upload(client, data)

    batch = await create(client, uploaded["id"])

    failed = await until(client, batch["id"], "failed")
    assert failed["errors"]["data"] == [
        {
            "code": "duplicate_custom_id",
            "message": "custom_id 'a' is also on line 1: each request's custom_id must be "
            "unique in the batch.",
            "line": 4,
            "param": "custom_id",
        },
        {
            "code": "duplicate_custom_id",
            "message": "custom_id 'b' is also on line 2: each request's custom_id must be "
            "unique in the batch.",
            "line": 6,
            "param": "custom_id",
        },
    ]
    assert failed["output_file_id"] is None
    assert failed["error_file_id"] is None
    listed = await (await client.get("/v1/tasks?limit=100", headers=ACME)).json()
    assert listed["data"] == []  # nothing ran


async def test_a_file_of_more_requests_than_a_batch_holds_fails_it(
    api_client: ApiClientFactory, monkeypatch: Any
) -> None:
    monkeypatch.setattr("orchestrator_api.batch.runner.MAX_BATCH_LINES", 3)
    client = await api_client()
    uploaded = await upload(client, jsonl(line("a"), b"", line("b"), line("c"), line("d")))

    batch = await create(client, uploaded["id"])

    failed = await until(client, batch["id"], "failed")
    assert [error["code"] for error in failed["errors"]["data"]] == ["too_many_requests"]
    listed = await (await client.get("/v1/tasks?limit=100", headers=ACME)).json()
    assert listed["data"] == []


async def test_the_most_requests_a_batch_holds_run(
    api_client: ApiClientFactory, monkeypatch: Any
) -> None:
    monkeypatch.setattr("orchestrator_api.batch.runner.MAX_BATCH_LINES", 3)
    client = await api_client()
    uploaded = await upload(client, jsonl(line("a"), b"", line("b"), line("c")))

    batch = await create(client, uploaded["id"])

    found = await batch_tasks(client, batch["id"], 3)
    assert sorted(found) == ["a", "b", "c"]


async def test_batch_lines_do_not_spend_the_tenants_rate_limit(
    api_client: ApiClientFactory, api_settings: ApiSettings
) -> None:
    # As at OpenAI, a batch has its own limits: its lines run at low priority within the
    # tenant's fair share and caps, and never take interactive submissions' rate.
    settings = attrs.evolve(api_settings, rate_limits=parse_rate_limits("acme=2/h"))
    client = await api_client(settings=settings)
    uploaded = await upload(client, jsonl(*(line(f"q{n}") for n in range(5))))

    batch = await create(client, uploaded["id"])

    found = await batch_tasks(client, batch["id"], 5)
    assert len(found) == 5
    for _ in range(2):  # the burst of two is still whole
        response = await client.post("/v1/tasks", json={"prompt": "hi"}, headers=ACME)
        assert response.status == 202, await response.text()
    response = await client.post("/v1/tasks", json={"prompt": "hi"}, headers=ACME)
    assert response.status == 429
