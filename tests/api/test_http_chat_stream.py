"""``POST /v1/chat/completions`` with ``stream``: the task's text as chunks, whatever order
the result events were applied in."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from orchestrator_tasks import TaskMessage, decode_task
from orchestrator_tasks.messages import ErrorInfo, EventKind, Usage
from tests.api.conftest import ACME, ApiClientFactory, CreateRecordingStore, api_state
from tests.api.test_http_streaming import HANG, result_event

BODY: dict[str, Any] = {
    "model": "echo",
    "messages": [{"role": "user", "content": "say hello"}],
    "stream": True,
}


async def _chunks(response: aiohttp.ClientResponse) -> list[Any]:
    """Every ``data:`` payload until the stream ends (``[DONE]`` as the string)."""
    payloads: list[Any] = []
    async with asyncio.timeout(HANG):
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                payloads.append(data if data == "[DONE]" else orjson.loads(data))
    return payloads


def _contents(payloads: list[Any]) -> list[str]:
    return [
        p["choices"][0]["delta"]["content"]
        for p in payloads
        if p != "[DONE]" and p["choices"] and "content" in p["choices"][0]["delta"]
    ]


def _succeeded(task_id: str, seq: int, text: str) -> Any:
    return result_event(
        task_id,
        EventKind.SUCCEEDED,
        seq,
        text=text,
        provider="echo",
        model="echo",
        usage=Usage(input_tokens=2, output_tokens=2),
        finish_reason="stop",
    )


async def _stream_with(api_client: ApiClientFactory, events: list[Any]) -> list[Any]:
    client = await api_client()
    response = await client.post("/v1/chat/completions", json=BODY, headers=ACME)
    assert response.status == 200, await response.text()
    task_id = response.headers["X-Task-Id"]
    store = api_state(client).store
    for make in events:
        await asyncio.sleep(0.02)  # each one read by the stream before the next
        await store.apply(make(task_id))
    return await _chunks(response)


async def test_the_deltas_then_the_finish_chunk(api_client: ApiClientFactory) -> None:
    payloads = await _stream_with(
        api_client,
        [
            lambda t: result_event(t, EventKind.STARTED, 0),
            lambda t: result_event(t, EventKind.DELTA, 1, text="Hel"),
            lambda t: result_event(t, EventKind.DELTA, 2, text="lo"),
            lambda t: _succeeded(t, 3, "Hello"),
        ],
    )
    assert _contents(payloads) == ["", "Hel", "lo"]
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1] == "[DONE]"


async def test_the_stream_ends_in_one_write(
    api_client: ApiClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    write, write_eof = web.StreamResponse.write, web.StreamResponse.write_eof

    async def counted(self: web.StreamResponse, data: bytes) -> None:
        writes.append(bytes(data))
        await write(self, data)

    async def counted_eof(self: web.StreamResponse, data: bytes = b"") -> None:
        if not self._eof_sent:  # (aiohttp calls it again once the handler returned)
            writes.append(b"EOF:" + bytes(data))
        await write_eof(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", counted)
    monkeypatch.setattr(web.StreamResponse, "write_eof", counted_eof)
    request = {**BODY, "stream_options": {"include_usage": True}}
    client = await api_client()
    response = await client.post("/v1/chat/completions", json=request, headers=ACME)
    task_id = response.headers["X-Task-Id"]
    store = api_state(client).store
    for make in [
        lambda t: result_event(t, EventKind.STARTED, 0),
        lambda t: result_event(t, EventKind.DELTA, 1, text="Hel"),
        lambda t: _succeeded(t, 2, "Hello"),  # the result carries "lo", the missed text
    ]:
        await asyncio.sleep(0.02)
        await store.apply(make(task_id))
    payloads = await _chunks(response)

    assert _contents(payloads) == ["", "Hel", "lo"]
    assert payloads[-2]["usage"]["total_tokens"] == 4
    # the role chunk, the delta, then the missed text, finish, usage and [DONE] at once
    assert len(writes) == 3
    assert writes[-1].startswith(b"EOF:data: ")
    assert writes[-1].endswith(b"data: [DONE]\n\n")


async def test_a_result_that_overtook_the_last_delta_still_completes_the_text(
    api_client: ApiClientFactory,
) -> None:
    # Two API replicas apply results in parallel: the terminal event (seq 3) may be applied
    # before the delta (seq 2) another replica holds, and the store then drops that delta.
    payloads = await _stream_with(
        api_client,
        [
            lambda t: result_event(t, EventKind.STARTED, 0),
            lambda t: result_event(t, EventKind.DELTA, 1, text="Hel"),
            lambda t: _succeeded(t, 3, "Hello"),
            lambda t: result_event(t, EventKind.DELTA, 2, text="lo"),  # too late: dropped
        ],
    )
    assert "".join(_contents(payloads)) == "Hello"
    assert _contents(payloads) == ["", "Hel", "lo"]
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"


async def test_an_answer_faster_than_a_delta_comes_in_one_chunk(
    api_client: ApiClientFactory,
) -> None:
    payloads = await _stream_with(api_client, [lambda t: _succeeded(t, 0, "Hello")])
    assert _contents(payloads) == ["", "Hello"]


async def _published(client: Any) -> str:
    """The id of the next task the API publishes (taken off the tasks stream as a worker
    would, and acked)."""
    return (await _next_task(client)).task_id


async def _next_task(client: Any) -> TaskMessage:
    broker = api_state(client).broker
    consumer = broker.consume("tasks", "workers", "test")
    try:
        async with asyncio.timeout(HANG):
            delivery = await anext(consumer)
        await delivery.ack()
    finally:
        await consumer.aclose()
    return decode_task(delivery.message.payload)


async def test_only_a_task_that_someone_streams_publishes_deltas(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    store = api_state(client).store

    streamed = await client.post("/v1/chat/completions", json=BODY, headers=ACME)
    assert (await _next_task(client)).deltas is True
    streamed.close()
    whole = {**BODY, "stream": False, "messages": [{"role": "user", "content": "whole"}]}
    pending = asyncio.ensure_future(client.post("/v1/chat/completions", json=whole, headers=ACME))
    task = await _next_task(client)
    assert task.deltas is False
    await store.apply(_succeeded(task.task_id, 0, "Hello"))
    assert (await pending).status == 200
    submitted = await client.post("/v1/tasks", json={"prompt": "p", "model": "echo"}, headers=ACME)
    assert submitted.status == 202
    assert (await _next_task(client)).deltas is True  # whoever submits it may stream it


async def test_a_non_streamed_answer_comes_from_the_result_and_again_from_the_cache(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    body = {**BODY, "stream": False}
    pending = asyncio.ensure_future(client.post("/v1/chat/completions", json=body, headers=ACME))
    store = api_state(client).store
    task_id = await _published(client)
    await store.apply(result_event(task_id, EventKind.STARTED, 0))
    await store.apply(result_event(task_id, EventKind.DELTA, 1, text="Hel"))
    await store.apply(_succeeded(task_id, 2, "Hello"))
    response = await pending
    assert response.status == 200, await response.text()
    assert response.headers["X-Task-Id"] == task_id
    answer = await response.json()
    assert answer["choices"][0]["message"]["content"] == "Hello"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert answer["model"] == "echo"
    # The same request again: a prompt cache hit, answered at once the same way.
    again = await client.post("/v1/chat/completions", json=body, headers=ACME)
    assert again.status == 200
    repeat = await again.json()
    assert repeat["choices"] == answer["choices"]
    assert repeat["usage"] == answer["usage"]


async def test_a_non_streamed_failure_is_an_openai_error(api_client: ApiClientFactory) -> None:
    client = await api_client()
    body = {**BODY, "stream": False}
    pending = asyncio.ensure_future(client.post("/v1/chat/completions", json=body, headers=ACME))
    store = api_state(client).store
    task_id = await _published(client)
    error = ErrorInfo(type="rate_limit", message="slow down")
    await store.apply(result_event(task_id, EventKind.FAILED, 0, error=error))
    response = await pending
    assert response.status == 429
    assert response.headers["X-Task-Id"] == task_id
    assert (await response.json())["error"]["message"] == "slow down"


async def test_a_chat_completion_tells_the_store_it_follows_its_task(
    api_client: ApiClientFactory,
) -> None:
    """Streamed or not, the answer follows the task from its start, so the store may get
    ready for that while it stores (``TaskStore.create``); a plain submit does not."""
    store = CreateRecordingStore()
    client = await api_client(store=store)
    for stream in (True, False):
        body = {**BODY, "stream": stream, "messages": [{"role": "user", "content": f"{stream}"}]}
        pending = asyncio.ensure_future(
            client.post("/v1/chat/completions", json=body, headers=ACME)
        )
        await store.apply(_succeeded(await _published(client), 0, "Hello"))
        response = await pending
        assert response.status == 200, await response.text()
        await response.read()
    response = await client.post("/v1/tasks", json={"prompt": "hello"}, headers=ACME)
    assert response.status == 202
    assert store.follows == [True, True, False]
    await store.close()
