"""A task's events over Server-Sent Events and WebSocket: ids, resume, live, end, shutdown."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from orchestrator_api.model import StoredEvent
from orchestrator_api.store import MemoryTaskStore, StoreUnavailable
from orchestrator_api.streaming import follow
from orchestrator_broker import Message
from orchestrator_tasks.messages import ErrorInfo, EventKind, ResultEvent, Usage, converter
from tests.api.conftest import ACME, GLOBEX, ApiClientFactory, api_state
from tests.api.test_http_tasks import problem_of
from tests.api.test_store import new_record

HANG = 20.0  # hang guard only, never an expectation


def result_event(task_id: str, kind: EventKind, seq: int, **fields: Any) -> ResultEvent:
    return ResultEvent(
        task_id=task_id,
        tenant="acme",
        kind=kind,
        attempt=fields.pop("attempt", 1),
        seq=seq,
        at=time.time(),
        **fields,
    )


def lifecycle(task_id: str) -> list[ResultEvent]:
    """What a worker publishes for a task that streams two chunks and succeeds."""
    return [
        result_event(task_id, EventKind.STARTED, 0),
        result_event(task_id, EventKind.DELTA, 1, text="Hel"),
        result_event(task_id, EventKind.DELTA, 2, text="lo"),
        result_event(
            task_id,
            EventKind.SUCCEEDED,
            3,
            text="Hello",
            provider="echo",
            model="echo-1",
            usage=Usage(input_tokens=1, output_tokens=2),
            finish_reason="stop",
        ),
    ]


async def new_task(client: TestClient[Any, Any]) -> str:
    response = await client.post("/v1/tasks", json={"prompt": "hi"}, headers=ACME)
    assert response.status == 202
    task_id: str = (await response.json())["id"]
    return task_id


async def apply_all(client: TestClient[Any, Any], events: list[ResultEvent]) -> None:
    store = api_state(client).store
    for event in events:
        assert await store.apply(event)


async def read_sse(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every SSE block until the server ends the stream: fields, and comments as ``comment``."""
    blocks: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with asyncio.timeout(HANG):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if current:
                    blocks.append(current)
                current = {}
            elif line.startswith(":"):
                current["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                current[name] = orjson.loads(value) if name == "data" else value
    return blocks


def messages(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [block for block in blocks if "event" in block]


# -- SSE --------------------------------------------------------------------------------------


async def test_sse_sends_every_event_with_an_id_and_ends_after_the_result(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    await apply_all(client, lifecycle(task_id))
    response = await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert "traceparent" in response.headers
    events = messages(await read_sse(response))
    assert [e["event"] for e in events] == ["status", "status", "delta", "delta", "result"]
    assert [e["data"].get("status") for e in events[:2]] == ["queued", "running"]
    assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == "Hello"
    assert events[-1]["data"]["text"] == "Hello"
    assert events[-1]["data"]["usage"] == {"input_tokens": 1, "output_tokens": 2}
    ids = [e["id"] for e in events]
    assert all(ids)
    assert len(set(ids)) == len(ids)


async def test_a_requeued_task_s_stream_goes_on_past_its_old_error_to_its_new_run(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    store = api_state(client).store
    await apply_all(client, [result_event(task_id, EventKind.FAILED, 0)])
    record = await store.get("acme", task_id)
    assert record is not None
    url = f"/v1/tasks/{task_id}/events"
    failed = messages(await read_sse(await client.get(url, headers=ACME)))
    assert [e["event"] for e in failed] == ["status", "error"]  # it ended there, then

    await store.requeue(record, 1)  # its dead letter replayed
    following = asyncio.create_task(
        read_sse(await client.get(url, headers={**ACME, "Last-Event-ID": failed[-1]["id"]}))
    )
    whole = asyncio.create_task(read_sse(await client.get(url, headers=ACME)))
    await asyncio.sleep(0.05)
    await apply_all(client, [result_event(task_id, EventKind.SUCCEEDED, 0, attempt=2, text="ok")])

    resumed = messages(await following)
    assert [(e["event"], e["data"]["attempt"]) for e in resumed] == [
        ("status", 1),
        ("result", 2),
    ]
    assert resumed[0]["data"]["status"] == "queued"
    assert [e["event"] for e in messages(await whole)] == [
        "status",
        "error",
        "status",
        "result",
    ]


async def test_sse_resumes_after_last_event_id_without_loss_or_repeat(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    await apply_all(client, lifecycle(task_id))
    url = f"/v1/tasks/{task_id}/events"
    everything = messages(await read_sse(await client.get(url, headers=ACME)))
    for cut in range(len(everything)):
        resumed = messages(
            await read_sse(
                await client.get(url, headers={**ACME, "Last-Event-ID": everything[cut]["id"]})
            )
        )
        assert resumed == everything[cut + 1 :]


async def test_sse_resume_also_works_with_the_query_parameter(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    await apply_all(client, lifecycle(task_id))
    url = f"/v1/tasks/{task_id}/events"
    everything = messages(await read_sse(await client.get(url, headers=ACME)))
    resumed = messages(
        await read_sse(
            await client.get(url, headers=ACME, params={"last_event_id": everything[2]["id"]})
        )
    )
    assert resumed == everything[3:]


async def test_sse_streams_events_live_as_the_worker_publishes_them(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    broker = api_state(client).broker
    response = await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)
    assert response.status == 200

    async def worker() -> None:
        for event in lifecycle(task_id):
            await asyncio.sleep(0.05)
            await broker.publish("results", Message(converter.unstructure(event)))

    publishing = asyncio.create_task(worker())
    events = messages(await read_sse(response))
    await publishing
    assert [e["event"] for e in events] == ["status", "status", "delta", "delta", "result"]


async def test_sse_sends_keepalive_comments_while_idle(api_client: ApiClientFactory) -> None:
    client = await api_client(heartbeat=0.05)
    task_id = await new_task(client)
    response = await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)
    comments = 0
    async with asyncio.timeout(HANG):
        async for raw in response.content:
            if raw.startswith(b": keepalive"):
                comments += 1
                if comments == 3:
                    break
    await apply_all(client, lifecycle(task_id))
    rest = messages(await read_sse(response))
    assert rest[-1]["event"] == "result"


async def test_sse_ends_after_an_error_event(api_client: ApiClientFactory) -> None:
    client = await api_client()
    task_id = await new_task(client)
    await apply_all(
        client,
        [
            result_event(task_id, EventKind.STARTED, 0),
            result_event(
                task_id, EventKind.FAILED, 1, error=ErrorInfo(type="timeout", message="too slow")
            ),
        ],
    )
    events = messages(await read_sse(await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)))
    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["type"] == "timeout"
    assert events[-1]["data"]["message"] == "too slow"


async def test_sse_resumed_after_the_terminal_event_ends_at_once(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    await apply_all(client, lifecycle(task_id))
    url = f"/v1/tasks/{task_id}/events"
    last = messages(await read_sse(await client.get(url, headers=ACME)))[-1]["id"]
    resumed = await read_sse(await client.get(url, headers={**ACME, "Last-Event-ID": last}))
    assert messages(resumed) == []


async def test_sse_of_an_unknown_or_foreign_task_is_a_404(api_client: ApiClientFactory) -> None:
    client = await api_client()
    task_id = await new_task(client)
    await problem_of(await client.get("/v1/tasks/nope/events", headers=ACME), 404)
    await problem_of(await client.get(f"/v1/tasks/{task_id}/events", headers=GLOBEX), 404)


async def test_app_shutdown_ends_open_sse_streams(api_client: ApiClientFactory) -> None:
    client = await api_client()
    task_id = await new_task(client)
    response = await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)
    assert response.status == 200
    reading = asyncio.create_task(read_sse(response))
    await asyncio.sleep(0.1)
    assert not reading.done()
    await client.app.shutdown()  # the on_shutdown hooks, as a draining server runs them
    blocks = await reading  # the stream ended by itself (read_sse has a hang guard)
    assert [e["data"]["status"] for e in messages(blocks)] == ["queued"]
    assert api_state(client).streams.open == 0


# -- WebSocket --------------------------------------------------------------------------------


async def read_ws(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(HANG):
        async for message in ws:
            assert message.type is aiohttp.WSMsgType.TEXT
            frames.append(orjson.loads(message.data))
    return frames


async def test_websocket_sends_the_same_events_as_json_frames_and_closes(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    await apply_all(client, lifecycle(task_id))
    sse = messages(await read_sse(await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)))
    ws = await client.ws_connect(f"/v1/tasks/{task_id}/ws", headers=ACME)
    frames = await read_ws(ws)
    assert frames == [{"id": e["id"], "event": e["event"], "data": e["data"]} for e in sse]
    assert ws.close_code == 1000


async def test_websocket_streams_live_and_resumes(api_client: ApiClientFactory) -> None:
    client = await api_client()
    task_id = await new_task(client)
    ws = await client.ws_connect(f"/v1/tasks/{task_id}/ws", headers=ACME)
    first = await asyncio.wait_for(ws.receive_json(), HANG)
    assert first["event"] == "status"
    await ws.close()
    await apply_all(client, lifecycle(task_id))
    resumed = await client.ws_connect(
        f"/v1/tasks/{task_id}/ws", headers=ACME, params={"last_event_id": first["id"]}
    )
    frames = await read_ws(resumed)
    assert [f["event"] for f in frames] == ["status", "delta", "delta", "result"]
    assert first["id"] not in [f["id"] for f in frames]


async def test_websocket_needs_a_key_and_the_tenants_task(api_client: ApiClientFactory) -> None:
    client = await api_client()
    task_id = await new_task(client)
    for headers, status in (({}, 401), (GLOBEX, 404)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as failed:
            await client.ws_connect(f"/v1/tasks/{task_id}/ws", headers=headers)
        assert failed.value.status == status


async def test_app_shutdown_closes_open_websockets_as_going_away(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    ws = await client.ws_connect(f"/v1/tasks/{task_id}/ws", headers=ACME)
    await asyncio.wait_for(ws.receive_json(), HANG)
    await client.app.shutdown()
    message = await asyncio.wait_for(ws.receive(), HANG)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 1001


async def test_websocket_route_without_an_upgrade_is_a_400_problem(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task_id = await new_task(client)
    await problem_of(await client.get(f"/v1/tasks/{task_id}/ws", headers=ACME), 400)


class FlakyStore(MemoryTaskStore):
    """Serves the event log once, then its backend goes away."""

    calls = 0

    async def events(
        self,
        tenant: str,
        task_id: str,
        after: str | None = None,
        timeout: float = 0.0,
        *,
        end_only: bool = False,
    ) -> list[StoredEvent]:
        self.calls += 1
        if self.calls > 1:
            raise StoreUnavailable("connection refused")
        return await super().events(tenant, task_id, after, timeout, end_only=end_only)


async def test_sse_ends_cleanly_when_the_store_goes_away_mid_stream(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client(store=FlakyStore(60))
    task_id = await new_task(client)
    events = messages(await read_sse(await client.get(f"/v1/tasks/{task_id}/events", headers=ACME)))
    assert [e["event"] for e in events] == ["status"]  # then the stream ended, no 500 text


async def test_websocket_closes_with_1011_when_the_store_goes_away(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client(store=FlakyStore(60))
    task_id = await new_task(client)
    ws = await client.ws_connect(f"/v1/tasks/{task_id}/ws", headers=ACME)
    frames = await read_ws(ws)
    assert [f["event"] for f in frames] == ["status"]
    assert ws.close_code == 1011


class _Ready(MemoryTaskStore):
    """A store whose every read has one event at once."""

    async def events(self, *args: Any, **kwargs: Any) -> list[StoredEvent]:
        return [StoredEvent(id="2", event="status", data={"status": "running"})]


async def test_a_follower_resumes_in_the_loop_turn_of_its_read() -> None:
    """Between the store's answer and its reader, ``follow`` adds no event-loop turn (it
    reads in the reader's own task): on a busy API each turn runs every other ready
    callback first, on every batch of every stream and every non-streamed answer.
    (Counted with ``sleep(0)``, which lets each ready callback run once.)"""
    store = _Ready(60)
    stop = asyncio.Event()
    events = follow(store, "acme", "t", "1", heartbeat=HANG, stop=[stop.wait()])
    reader = asyncio.ensure_future(anext(events))
    for _ in range(1):  # the reader reads, in its own task: the events are there at once
        await asyncio.sleep(0)
    assert reader.done()
    assert reader.result().id == "2"
    stop.set()
    await events.aclose()
    await store.close()


async def test_a_follower_stops_at_once_while_the_store_waits() -> None:
    store = MemoryTaskStore(60)
    record = await store.create(new_record())
    stop = asyncio.Event()
    events = follow(store, "acme", record.id, "1", heartbeat=HANG, stop=[stop.wait()])
    reader = asyncio.ensure_future(anext(events, "ended"))
    await asyncio.sleep(0.05)
    assert not reader.done()  # waiting in the store for the task's events
    stop.set()
    async with asyncio.timeout(HANG):
        assert await reader == "ended"
    await store.close()


async def test_a_follower_stopped_in_its_wait_leaves_its_task_uncancelled() -> None:
    store = MemoryTaskStore(60)
    record = await store.create(new_record())
    stop = asyncio.Event()

    async def reader() -> tuple[list[Any], int]:
        events = follow(store, "acme", record.id, "1", heartbeat=HANG, stop=[stop.wait()])
        seen = [event async for event in events]
        await asyncio.sleep(0.01)  # the reader's task goes on: no cancel left on it
        task = asyncio.current_task()
        assert task is not None
        return seen, task.cancelling()

    running = asyncio.ensure_future(reader())
    await asyncio.sleep(0.05)
    stop.set()
    async with asyncio.timeout(HANG):
        assert await running == ([], 0)
    await store.close()


async def test_a_follower_whose_task_is_cancelled_as_it_stops_is_cancelled() -> None:
    """The reader's own cancel (its client went away) is never taken for the stop."""
    store = MemoryTaskStore(60)
    record = await store.create(new_record())
    stop = asyncio.Event()

    async def reader() -> None:
        events = follow(store, "acme", record.id, "1", heartbeat=HANG, stop=[stop.wait()])
        async for _ in events:
            pass
        await asyncio.sleep(HANG)  # not reached when cancelled

    running = asyncio.ensure_future(reader())
    await asyncio.sleep(0.05)
    stop.set()
    running.cancel()
    async with asyncio.timeout(HANG):
        with pytest.raises(asyncio.CancelledError):
            await running
    await store.close()
