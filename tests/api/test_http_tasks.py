"""POST /v1/tasks and GET /v1/tasks/{id} over real HTTP, on the in-memory broker and store."""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import orjson
import pytest

from orchestrator_api.config import ApiSettings
from orchestrator_api.model import TaskRecord
from orchestrator_api.store import StoreUnavailable
from orchestrator_api.store.memory import MemoryTaskStore
from orchestrator_broker import BrokerUnavailable, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_tasks import messages_of
from orchestrator_tasks.messages import (
    ErrorInfo,
    EventKind,
    ResultEvent,
    TaskMessage,
    Usage,
    converter,
)
from tests.api.conftest import ACME, API_KEYS, GLOBEX, ApiClientFactory, api_state

PROBLEM = "application/problem+json"


async def problem_of(response: Any, status: int) -> dict[str, Any]:
    """Assert ``response`` is a ``status`` problem and return its body."""
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


async def published(broker: MemoryBroker, stream: str = "tasks") -> list[TaskMessage]:
    """Every task message on ``stream`` so far (read by a throwaway consumer group)."""
    await broker.ensure_group(stream, "inspect")
    out: list[TaskMessage] = []
    consumer = broker.consume(stream, "inspect", "inspector")
    try:
        while True:
            try:
                delivery = await asyncio.wait_for(anext(consumer), 0.2)
            except TimeoutError:
                return out
            out.append(converter.structure(delivery.message.payload, TaskMessage))
            await delivery.ack()
    finally:
        await consumer.aclose()


# -- accepting tasks --------------------------------------------------------------------------


async def test_submit_returns_202_with_the_queued_task_and_its_location(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    before = time.time()
    response = await client.post("/v1/tasks", json={"prompt": "hello"}, headers=ACME)
    assert response.status == 202
    task = await response.json()
    assert task["status"] == "queued"
    assert response.headers["Location"] == f"/v1/tasks/{task['id']}"
    assert task["attempts"] == 0
    assert task["result"] is None
    assert task["error"] is None
    from datetime import datetime

    created = datetime.fromisoformat(task["created_at"]).timestamp()
    assert before - 1 <= created <= time.time() + 1


async def test_submit_publishes_the_task_message_with_every_field(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    body = {
        "prompt": "tell me",
        "model": "echo",
        "system": "be brief",
        "parameters": {"temperature": 0.2, "latency_ms": 5},
        "metadata": {"user": "u1"},
    }
    response = await client.post("/v1/tasks", json=body, headers=ACME)
    assert response.status == 202
    task = await response.json()
    [message] = await published(api_state(client).broker)  # type: ignore[arg-type]
    assert message.task_id == task["id"]
    assert message.tenant == "acme"
    assert message.messages == messages_of("tell me", "be brief")
    assert message.model == "echo"
    assert message.parameters == {"temperature": 0.2, "latency_ms": 5}
    assert task["metadata"] == {"user": "u1"}
    assert task["model"] == "echo"


async def test_submitted_task_is_readable_by_its_tenant(api_client: ApiClientFactory) -> None:
    client = await api_client()
    created = await (await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)).json()
    response = await client.get(f"/v1/tasks/{created['id']}", headers=ACME)
    assert response.status == 200
    assert await response.json() == created


async def test_task_shows_result_once_the_worker_succeeded(api_client: ApiClientFactory) -> None:
    client = await api_client()
    task = await (await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)).json()
    store = api_state(client).store
    now = time.time()
    common: dict[str, Any] = {"task_id": task["id"], "tenant": "acme", "attempt": 1}
    await store.apply(ResultEvent(kind=EventKind.STARTED, seq=0, at=now, **common))
    running = await (await client.get(f"/v1/tasks/{task['id']}", headers=ACME)).json()
    assert running["status"] == "running"
    assert running["started_at"] is not None
    assert running["attempts"] == 1
    await store.apply(
        ResultEvent(
            kind=EventKind.SUCCEEDED,
            seq=1,
            at=now + 1,
            text="the answer",
            provider="echo",
            model="echo-1",
            usage=Usage(input_tokens=3, output_tokens=2),
            finish_reason="stop",
            cost_usd=0.0125,
            **common,
        )
    )
    done = await (await client.get(f"/v1/tasks/{task['id']}", headers=ACME)).json()
    assert done["status"] == "succeeded"
    assert done["finished_at"] is not None
    assert done["result"] == {
        "text": "the answer",
        "usage": {"input_tokens": 3, "output_tokens": 2},
        "provider": "echo",
        "model": "echo-1",
        "finish_reason": "stop",
        "cost_usd": 0.0125,
    }
    assert (done["cached"], done["joined"]) == (False, False)
    assert done["error"] is None


async def test_task_shows_the_error_once_the_worker_failed(api_client: ApiClientFactory) -> None:
    client = await api_client()
    task = await (await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)).json()
    await api_state(client).store.apply(
        ResultEvent(
            task_id=task["id"],
            tenant="acme",
            kind=EventKind.FAILED,
            attempt=1,
            seq=0,
            at=time.time(),
            error=ErrorInfo(type="rate_limit", message="slow down"),
        )
    )
    done = await (await client.get(f"/v1/tasks/{task['id']}", headers=ACME)).json()
    assert done["status"] == "failed"
    assert done["error"] == {"type": "rate_limit", "message": "slow down"}
    assert done["result"] is None


async def test_results_published_on_the_results_stream_reach_the_task(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task = await (await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)).json()
    event = ResultEvent(
        task_id=task["id"],
        tenant="acme",
        kind=EventKind.SUCCEEDED,
        attempt=1,
        seq=0,
        at=time.time(),
        text="via the stream",
    )
    await api_state(client).broker.publish("results", Message(converter.unstructure(event)))
    deadline = time.monotonic() + 20  # hang guard only
    while True:
        current = await (await client.get(f"/v1/tasks/{task['id']}", headers=ACME)).json()
        if current["status"] == "succeeded" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert current["status"] == "succeeded"
    assert current["result"]["text"] == "via the stream"


# -- idempotency ------------------------------------------------------------------------------


async def test_same_idempotency_key_returns_the_same_task_with_200(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    headers = {**ACME, "Idempotency-Key": "order-17"}
    first = await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    second = await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    assert first.status == 202
    assert second.status == 200
    assert (await second.json())["id"] == (await first.json())["id"]
    assert second.headers["Location"] == first.headers["Location"]
    assert len(await published(api_state(client).broker)) == 1  # type: ignore[arg-type]


async def test_same_idempotency_key_with_another_body_is_a_422(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    headers = {**ACME, "Idempotency-Key": "order-18"}
    first = await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    assert first.status == 202

    for body in (
        {"prompt": "y"},
        {"prompt": "x", "metadata": {"k": 1}},
        {"prompt": "x", "cache": False},
    ):
        problem = await problem_of(await client.post("/v1/tasks", json=body, headers=headers), 422)
        assert problem["type"] == "urn:ai-orchestrator:problem:idempotency-key-reused"
    assert len(await published(api_state(client).broker)) == 1  # type: ignore[arg-type]


async def test_same_idempotency_key_with_the_same_body_written_differently_is_a_replay(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    headers = {**ACME, "Idempotency-Key": "order-19", "Content-Type": "application/json"}
    first = await client.post(
        "/v1/tasks", data=b'{"prompt": "x", "parameters": {"a": 1, "b": 2}}', headers=headers
    )
    again = await client.post(
        "/v1/tasks", data=b'{"parameters":{"b":2,"a":1},"prompt":"x"}', headers=headers
    )
    assert (first.status, again.status) == (202, 200)
    assert (await again.json())["id"] == (await first.json())["id"]


async def test_idempotency_keys_are_per_tenant(api_client: ApiClientFactory) -> None:
    client = await api_client()
    key = {"Idempotency-Key": "shared-key"}
    acme = await client.post("/v1/tasks", json={"prompt": "x"}, headers={**ACME, **key})
    globex = await client.post("/v1/tasks", json={"prompt": "x"}, headers={**GLOBEX, **key})
    assert acme.status == globex.status == 202
    assert (await acme.json())["id"] != (await globex.json())["id"]


async def test_different_idempotency_keys_make_different_tasks(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    one = await client.post(
        "/v1/tasks", json={"prompt": "x"}, headers={**ACME, "Idempotency-Key": "a"}
    )
    two = await client.post(
        "/v1/tasks", json={"prompt": "x"}, headers={**ACME, "Idempotency-Key": "b"}
    )
    assert (await one.json())["id"] != (await two.json())["id"]


async def test_overlong_idempotency_key_is_a_400(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks", json={"prompt": "x"}, headers={**ACME, "Idempotency-Key": "k" * 256}
    )
    body = await problem_of(response, 400)
    assert body["errors"][0]["field"] == "Idempotency-Key"


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "x", "model": 7}, "model"),
        ({"prompt": "x", "model": ""}, "model"),
        ({"prompt": "x", "system": ["a"]}, "system"),
        ({"prompt": "x", "parameters": "hot"}, "parameters"),
        ({"prompt": "x", "parameters": [1]}, "parameters"),
        ({"prompt": "x", "parameters": {"latency_ms": -1}}, "parameters.latency_ms"),
        ({"prompt": "x", "parameters": {"latency_ms": "5"}}, "parameters.latency_ms"),
        ({"prompt": "x", "parameters": {"latency_ms": True}}, "parameters.latency_ms"),
        ({"prompt": "x", "metadata": 1}, "metadata"),
        ({"prompt": "x", "priority": "urgent"}, "priority"),
        ({"prompt": "x", "priority": 1}, "priority"),
        ({"prompt": "x", "urgency": "high"}, "urgency"),
    ],
)
async def test_invalid_fields_are_a_400_naming_the_field(
    api_client: ApiClientFactory, body: dict[str, Any], field: str
) -> None:
    client = await api_client()
    response = await client.post("/v1/tasks", json=body, headers=ACME)
    problem = await problem_of(response, 400)
    assert field in [error["field"] for error in problem["errors"]]
    assert all(error["message"] for error in problem["errors"])
    assert await published(api_state(client).broker) == []  # type: ignore[arg-type]


async def test_every_invalid_field_is_reported_at_once(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks", json={"prompt": "", "model": 1, "extra": True}, headers=ACME
    )
    problem = await problem_of(response, 400)
    assert {e["field"] for e in problem["errors"]} == {"prompt", "model", "extra"}


async def test_a_body_that_is_not_an_object_is_a_400(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post("/v1/tasks", json=["prompt"], headers=ACME)
    await problem_of(response, 400)


async def test_malformed_json_is_a_400(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks",
        data=b'{"prompt": "x",',
        headers={**ACME, "Content-Type": "application/json"},
    )
    problem = await problem_of(response, 400)
    assert "JSON" in problem["detail"]


async def test_non_json_content_type_is_a_415(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks", data=b"prompt=x", headers={**ACME, "Content-Type": "text/plain"}
    )
    await problem_of(response, 415)
    assert response.headers["Accept-Post"] == "application/json"


async def test_missing_content_type_is_a_415(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post("/v1/tasks", data=b'{"prompt": "x"}', headers=ACME)
    await problem_of(response, 415)


async def test_json_with_charset_is_accepted(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks",
        data=orjson.dumps({"prompt": "x"}),
        headers={**ACME, "Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status == 202


async def test_body_over_max_body_bytes_is_a_413(api_client: ApiClientFactory) -> None:
    settings = ApiSettings(api_keys=API_KEYS, max_body_bytes=2048)
    client = await api_client(settings=settings)
    response = await client.post("/v1/tasks", json={"prompt": "x" * 4096}, headers=ACME)
    await problem_of(response, 413)


async def test_chunked_body_over_max_body_bytes_is_a_413(api_client: ApiClientFactory) -> None:
    settings = ApiSettings(api_keys=API_KEYS, max_body_bytes=2048)
    client = await api_client(settings=settings)

    async def chunks() -> Any:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = await client.post(
        "/v1/tasks", data=chunks(), headers={**ACME, "Content-Type": "application/json"}
    )
    await problem_of(response, 413)


@pytest.mark.parametrize(("size", "status"), [(100, 202), (40_000, 413)])
async def test_a_compressed_body_is_limited_by_its_decompressed_size(
    api_client: ApiClientFactory, size: int, status: int
) -> None:
    settings = ApiSettings(api_keys=API_KEYS, max_body_bytes=2048)
    client = await api_client(settings=settings)
    body = gzip.compress(orjson.dumps({"prompt": "x", "metadata": {"pad": "x" * size}}))
    assert len(body) < 2048
    response = await client.post(
        "/v1/tasks",
        data=body,
        headers={**ACME, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    if status == 413:
        await problem_of(response, 413)
    else:
        assert response.status == status, await response.text()


async def test_prompt_over_max_prompt_chars_is_a_413(api_client: ApiClientFactory) -> None:
    settings = ApiSettings(api_keys=API_KEYS, max_prompt_chars=10)
    client = await api_client(settings=settings)
    ok = await client.post("/v1/tasks", json={"prompt": "x" * 10}, headers=ACME)
    assert ok.status == 202
    response = await client.post("/v1/tasks", json={"prompt": "x" * 11}, headers=ACME)
    problem = await problem_of(response, 413)
    assert "prompt" in problem["detail"]


# -- the broker cannot take it ----------------------------------------------------------------


class DownBroker(MemoryBroker):
    """A broker whose publishes fail (as a Redis that went away does) while ``down``."""

    down = True

    async def publish(self, stream: str, message: Message, **options: Any) -> str:
        if self.down:
            raise BrokerUnavailable("connection refused")
        return await super().publish(stream, message, **options)


class StuckBroker(MemoryBroker):
    """A broker whose publishes never finish (a hung connection)."""

    async def publish(self, stream: str, message: Message, **options: Any) -> str:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_publish_failure_is_a_503_with_retry_after_and_leaves_no_record(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client(broker=DownBroker())
    headers = {**ACME, "Idempotency-Key": "retry-me"}
    response = await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    await problem_of(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    store = api_state(client).store
    assert store._entries == {}  # type: ignore[attr-defined]
    assert store._idempotency == {}  # type: ignore[attr-defined]


async def test_publish_that_hangs_is_a_503_not_a_hang(api_client: ApiClientFactory) -> None:
    client = await api_client(broker=StuckBroker(), publish_timeout=0.2)
    response = await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)
    await problem_of(response, 503)
    assert api_state(client).store._entries == {}  # type: ignore[attr-defined]


async def test_idempotency_key_works_again_after_a_failed_publish(
    api_client: ApiClientFactory,
) -> None:
    broker = DownBroker()
    client = await api_client(broker=broker)
    headers = {**ACME, "Idempotency-Key": "again"}
    assert (await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)).status == 503
    broker.down = False  # the broker is back
    assert (await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)).status == 202


class GatedBroker(MemoryBroker):
    """A broker whose publishes wait until ``gate`` opens (a slow Redis round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def publish(self, stream: str, message: Message, **options: Any) -> str:
        self.waiting.set()
        await self.gate.wait()
        return await super().publish(stream, message, **options)


class UndiscardableStore(MemoryTaskStore):
    """A store whose discard fails (its backend went away right after the create)."""

    async def discard(self, tenant: str, task_id: str) -> None:
        raise StoreUnavailable("connection refused")


async def test_a_replay_while_the_first_request_is_still_publishing_is_a_409(
    api_client: ApiClientFactory,
) -> None:
    broker = GatedBroker()
    client = await api_client(broker=broker)
    headers = {**ACME, "Idempotency-Key": "in-flight"}
    first = asyncio.create_task(client.post("/v1/tasks", json={"prompt": "x"}, headers=headers))
    async with asyncio.timeout(10):
        await broker.waiting.wait()

    replay = await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)

    problem = await problem_of(replay, 409)
    assert problem["type"] == "urn:ai-orchestrator:problem:idempotency-key-in-use"
    assert int(replay.headers["Retry-After"]) >= 1
    broker.gate.set()
    async with asyncio.timeout(10):
        accepted = await first
    assert accepted.status == 202
    again = await client.post("/v1/tasks", json={"prompt": "x"}, headers=headers)
    assert again.status == 200
    assert (await again.json())["id"] == (await accepted.json())["id"]
    assert len(await published(broker)) == 1


async def test_a_key_left_pending_by_a_failed_publish_and_discard_is_taken_over(
    api_client: ApiClientFactory,
) -> None:
    broker = DownBroker()
    store = UndiscardableStore(60, pending_seconds=0.3)
    client = await api_client(broker=broker, store=store)
    headers = {**ACME, "Idempotency-Key": "abandoned"}
    body = {"prompt": "same prompt", "cache": True}
    await problem_of(await client.post("/v1/tasks", json=body, headers=headers), 503)
    broker.down = False

    # The record is left behind, pending: neither served nor joined...
    await problem_of(await client.post("/v1/tasks", json=body, headers=headers), 409)
    alone = await client.post("/v1/tasks", json=body, headers=ACME)
    assert alone.status == 202
    assert (await alone.json())["joined"] is False
    # ...and once abandoned, its idempotency key goes to a new task that runs.
    await asyncio.sleep(0.5)
    retried = await client.post("/v1/tasks", json=body, headers=headers)
    assert retried.status == 202
    task_id = (await retried.json())["id"]
    assert task_id in {m.task_id for m in await published(broker)}
    assert (await client.get(f"/v1/tasks/{task_id}", headers=ACME)).status == 200


# -- reading tasks ----------------------------------------------------------------------------


async def test_unknown_task_is_a_404_problem(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.get("/v1/tasks/0123456789abcdef0123456789abcdef", headers=ACME)
    await problem_of(response, 404)


async def test_overlong_task_id_is_a_404(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.get("/v1/tasks/" + "a" * 500, headers=ACME)
    await problem_of(response, 404)


async def test_unknown_route_and_wrong_method_are_problems(api_client: ApiClientFactory) -> None:
    client = await api_client()
    await problem_of(await client.get("/v2/nothing", headers=ACME), 404)
    response = await client.delete("/v1/tasks", headers=ACME)
    await problem_of(response, 405)
    assert "POST" in response.headers["Allow"]


async def test_an_unexpected_error_is_a_500_problem_without_internals(
    api_client: ApiClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await api_client()

    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret internals")

    api_state(client).store.get = broken  # type: ignore[method-assign]
    response = await client.get("/v1/tasks/abc", headers=ACME)
    body = await problem_of(response, 500)
    assert "secret" not in orjson.dumps(body).decode()
    assert "Traceback" not in await response.text()
    assert "secret internals" in caplog.text  # logged for operators


# -- tracing ----------------------------------------------------------------------------------


async def test_responses_carry_traceparent_and_the_task_its_trace_id(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    response = await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, len(trace_id), len(span_id), len(flags)) == ("00", 32, 16, 2)
    task = await response.json()
    assert task["trace_id"] == trace_id
    problem = await client.get("/v1/tasks/nope", headers=ACME)
    assert problem.status == 404
    assert "traceparent" in problem.headers


async def test_an_incoming_traceparent_is_continued(api_client: ApiClientFactory) -> None:
    client = await api_client()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await client.post(
        "/v1/tasks", json={"prompt": "x"}, headers={**ACME, "traceparent": parent}
    )
    assert response.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert (await response.json())["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


class HangingStore(MemoryTaskStore):
    """A store whose backend stopped answering (writes and reads hang)."""

    async def create(
        self,
        record: TaskRecord,
        idempotency_key: str | None = None,
        cache_key: str | None = None,
        fingerprint: str | None = None,
        *,
        deltas: bool = True,
        follow: bool = False,
    ) -> TaskRecord:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def get(self, tenant: str, task_id: str) -> TaskRecord | None:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_store_that_hangs_is_a_503_not_a_hang(api_client: ApiClientFactory) -> None:
    client = await api_client(store=HangingStore(60), publish_timeout=0.2)
    response = await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)
    await problem_of(response, 503)
    assert "Retry-After" in response.headers
    assert await published(api_state(client).broker) == []  # type: ignore[arg-type]
    await problem_of(await client.get("/v1/tasks/abc", headers=ACME), 503)


async def test_a_whole_number_written_as_a_float_is_accepted_and_published_as_an_int(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks",
        json={"prompt": "x", "model": "echo", "parameters": {"max_tokens": 5.0, "top_k": 2.0}},
        headers=ACME,
    )
    assert response.status == 202, await response.text()
    (task,) = await published(api_state(client).broker)  # type: ignore[arg-type]
    assert task.parameters == {"max_tokens": 5, "top_k": 2}
    assert all(type(value) is int for value in task.parameters.values())


@pytest.mark.parametrize("key", ["   ", "\xa0", "x" * 256, "soft\xadhyphen"])
async def test_an_idempotency_key_the_document_refuses_is_a_400(
    api_client: ApiClientFactory, key: str
) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks", json={"prompt": "x"}, headers={**ACME, "Idempotency-Key": key}
    )
    assert response.status == 400


def _nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("field", ["metadata", "parameters"])
async def test_json_nested_deeper_than_the_limit_is_a_400_naming_the_field(
    api_client: ApiClientFactory, field: str
) -> None:
    client = await api_client()
    # 300 levels: the body parser reads them, the JSON encoder would not (a 500 before).
    deep = await client.post("/v1/tasks", json={"prompt": "x", field: _nested(300)}, headers=ACME)
    problem = await problem_of(deep, 400)
    assert [e["field"] for e in problem["errors"]] == [field]
    assert "32" in problem["errors"][0]["message"]
    # at the limit, still fine
    ok = await client.post("/v1/tasks", json={"prompt": "x", "metadata": _nested(32)}, headers=ACME)
    assert ok.status == 202, await ok.text()


# -- priorities -------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
async def test_submit_carries_the_priority_to_the_task_message_and_the_record(
    api_client: ApiClientFactory, priority: str
) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks", json={"prompt": "hello", "priority": priority}, headers=ACME
    )
    assert response.status == 202
    task = await response.json()
    assert task["priority"] == priority
    assert task["queue_wait"] is None  # not started yet
    [message] = await published(api_state(client).broker)  # type: ignore[arg-type]
    assert message.priority == priority


async def test_the_priority_defaults_to_normal(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post("/v1/tasks", json={"prompt": "hello"}, headers=ACME)
    task = await response.json()
    assert task["priority"] == "normal"
    [message] = await published(api_state(client).broker)  # type: ignore[arg-type]
    assert message.priority == "normal"
