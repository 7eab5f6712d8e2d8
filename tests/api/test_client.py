"""``ai-orchestrator submit``'s client against the real API over loopback: safe retries with
one Idempotency-Key, bounded tries, polls that ride out a 503, and a stream that resumes
with Last-Event-ID across an API restart."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import TracerProvider

from orchestrator_api.app import create_app
from orchestrator_api.config import ApiSettings
from orchestrator_api.model import TaskRecord
from orchestrator_api.store import StoreUnavailable
from orchestrator_api.store.memory import MemoryTaskStore
from orchestrator_broker import BrokerUnavailable, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_cli.client import ClientError, _Retrier, _Transient, submit
from tests.api.conftest import API_KEYS, ApiClientFactory, CreateRecordingStore
from tests.api.test_http_tasks import published
from tests.api.test_store import delta, started, succeeded
from tests.support.redis_server import free_port

HANG = 20.0


class FlakyBroker(MemoryBroker):
    """Publishes fail (as a Redis restarting does) ``failures`` times, then work."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish(self, stream: str, message: Message, **options: Any) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise BrokerUnavailable("connection refused")
        return await super().publish(stream, message, **options)


class FlakyReadStore(MemoryTaskStore):
    """Reads of a task fail once (503), then work."""

    failed = False

    async def get(self, tenant: str, task_id: str) -> TaskRecord | None:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("connection reset")
        return await super().get(tenant, task_id)


async def until(check: Any) -> None:
    async with asyncio.timeout(HANG):
        while not check():  # noqa: ASYNC110 - polling state another task changes
            await asyncio.sleep(0.01)


async def test_a_submission_the_api_could_not_take_is_retried_with_the_same_key(
    api_client: ApiClientFactory,
) -> None:
    broker, store = FlakyBroker(failures=1), CreateRecordingStore()
    client = await api_client(broker=broker, store=store)
    out = io.StringIO()

    code = await submit(str(client.make_url("")), "key-acme", {"prompt": "x"}, out=out)

    assert code == 0
    assert len(store.keys) == 2
    assert store.keys[0] is not None
    assert store.keys[0] == store.keys[1]
    assert [m.task_id for m in await published(broker)] == [orjson.loads(out.getvalue())["id"]]


async def test_retries_are_bounded(api_client: ApiClientFactory) -> None:
    client = await api_client(broker=FlakyBroker(failures=10))

    with pytest.raises(ClientError, match=r"HTTP 503.*gave up after 2 tries"):
        await submit(str(client.make_url("")), "key-acme", {"prompt": "x"}, tries=2)


async def test_a_refusal_is_not_retried(api_client: ApiClientFactory) -> None:
    store = CreateRecordingStore()
    client = await api_client(store=store)

    with pytest.raises(ClientError, match="HTTP 401"):
        await submit(str(client.make_url("")), "wrong-key", {"prompt": "x"})
    with pytest.raises(ClientError, match="HTTP 400"):
        await submit(str(client.make_url("")), "key-acme", {"prompt": ""})
    assert store.keys == []


async def test_waiting_rides_out_a_503_while_polling(api_client: ApiClientFactory) -> None:
    store = FlakyReadStore(60)
    client = await api_client(store=store)
    out = io.StringIO()
    waiting = asyncio.create_task(
        submit(str(client.make_url("")), "key-acme", {"prompt": "x"}, mode="wait", out=out)
    )
    await until(lambda: store._entries)
    (task_id,) = store._entries
    record = store._entries[task_id].record

    await store.apply(succeeded(record, 0, "the answer"))

    async with asyncio.timeout(HANG):
        assert await waiting == 0
    assert out.getvalue() == "the answer\n"
    assert store.failed


async def test_a_stream_resumes_after_an_api_restart_without_repeats() -> None:
    broker, store = MemoryBroker(), MemoryTaskStore(60)
    settings = ApiSettings(api_keys=API_KEYS, host="127.0.0.1", port=0)
    port = free_port()

    async def serve() -> TestServer:
        app = create_app(settings, broker=broker, store=store, tracer_provider=TracerProvider())
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server()
        return server

    first = await serve()
    out = io.StringIO()
    url = str(first.make_url(""))
    streaming = asyncio.create_task(
        submit(url, "key-acme", {"prompt": "x"}, mode="stream", out=out)
    )
    try:
        await until(lambda: store._entries)
        (task_id,) = store._entries
        record = store._entries[task_id].record
        await store.apply(started(record))
        await store.apply(delta(record, 1, "Hel"))
        await until(lambda: out.getvalue() == "Hel")

        await first.close()  # closes the open event stream
        second = await serve()
        try:
            await store.apply(delta(record, 2, "lo"))
            await store.apply(succeeded(record, 3, "Hello"))
            async with asyncio.timeout(HANG):
                assert await streaming == 0
        finally:
            await second.close()
    finally:
        streaming.cancel()
        await first.close()
        await broker.close()
        await store.close()
    assert out.getvalue() == "Hello\n"


async def test_a_server_retry_after_is_honoured_in_full_within_the_deadline() -> None:
    retrier = _Retrier("http://api", tries=5, deadline=time.monotonic() + 20)

    # 30 s asked, 20 s left: give up now rather than come back early (after a capped wait).
    async with asyncio.timeout(2):
        with pytest.raises(ClientError, match="out of time"):
            await retrier.failed(_Transient("HTTP 429: slow down", wait=30))
