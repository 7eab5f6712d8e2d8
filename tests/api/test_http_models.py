"""GET /v1/models, /health's worker count and the model check at submit, over real HTTP,
with real workers running in process on the same in-memory broker."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient

from orchestrator_api.workers import WorkerDirectory, unserved_model
from orchestrator_broker import BrokerUnavailable, MemoryBroker
from orchestrator_tasks import (
    NOT_BLANK_PATTERN,
    WorkerAdvert,
    encode_advert,
    is_blank,
    presence_group,
)
from orchestrator_worker import Worker, WorkerSettings
from tests.api.conftest import ACME, ApiClientFactory
from tests.api.test_http_openapi import Checked, fetch_document

StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    memory = MemoryBroker()
    yield memory
    await memory.close()


@pytest.fixture
async def start_worker(broker: MemoryBroker) -> AsyncIterator[StartWorker]:
    """``await start_worker(name, **settings)``: a Worker running on ``broker``."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(name: str, **overrides: Any) -> Worker:
        settings = attrs.evolve(WorkerSettings(consumer_name=name, shutdown_grace=1.0), **overrides)
        worker = Worker(broker, settings)
        running.append((worker, asyncio.create_task(worker.run())))
        return worker

    yield start
    for worker, task in running:
        worker.stop(force=True)
        async with asyncio.timeout(15):
            await task


async def wait_for_json(
    client: TestClient[Any, Any], path: str, check: Callable[[Any], bool], **kwargs: Any
) -> Any:
    """GET ``path`` until its JSON body passes ``check`` (the API caches the live workers
    for a moment; the timeout only guards against a hang)."""
    async with asyncio.timeout(20):
        while True:
            response = await client.get(path, **kwargs)
            body = await response.json()
            if check(body):
                return body
            await asyncio.sleep(0.1)


def ids(listing: dict[str, Any]) -> list[str]:
    return [model["id"] for model in listing["data"]]


async def test_no_worker_alive_lists_nothing_and_accepts_any_model(
    api_client: ApiClientFactory, broker: MemoryBroker
) -> None:
    client = await api_client(broker=broker)
    response = await client.get("/v1/models", headers=ACME)
    assert response.status == 200
    assert await response.json() == {"object": "list", "data": []}
    assert (await (await client.get("/health")).json())["workers"] == 0
    submitted = await client.post(
        "/v1/tasks", json={"prompt": "x", "model": "anthropic/claude"}, headers=ACME
    )
    assert submitted.status == 202  # queued, for a worker that may serve it yet


async def test_models_lists_what_live_workers_serve(
    api_client: ApiClientFactory, broker: MemoryBroker, start_worker: StartWorker
) -> None:
    client = await api_client(broker=broker)
    await start_worker("w1", model_aliases={"fast": ("echo",)})
    await start_worker("w2", default_model="echo/slow")

    listing = await wait_for_json(client, "/v1/models", lambda b: len(b["data"]) == 3, headers=ACME)

    assert listing["object"] == "list"
    assert ids(listing) == ["echo", "echo/slow", "fast"]
    owners = {model["id"]: model["owned_by"] for model in listing["data"]}
    assert owners == {"echo": "echo", "echo/slow": "echo", "fast": "ai-orchestrator"}
    assert all(m["object"] == "model" and m["created"] > 0 for m in listing["data"])
    assert (await (await client.get("/health")).json())["workers"] == 2


async def test_one_model_is_found_when_a_live_worker_serves_it(
    api_client: ApiClientFactory, broker: MemoryBroker, start_worker: StartWorker
) -> None:
    client = await api_client(broker=broker)
    await start_worker("w1", model_aliases={"fast": ("echo",)})
    await wait_for_json(client, "/health", lambda b: b["workers"] == 1)

    fast = await client.get("/v1/models/fast", headers=ACME)
    assert (fast.status, (await fast.json())["owned_by"]) == (200, "ai-orchestrator")
    # Any name under a served prefix is served, listed or not; the id keeps its '/'.
    echo = await client.get("/v1/models/echo/anything", headers=ACME)
    assert (echo.status, (await echo.json())["id"]) == (200, "echo/anything")
    missing = await client.get("/v1/models/anthropic/claude", headers=ACME)
    assert missing.status == 404
    assert (await client.get("/v1/models", headers={})).status == 401
    assert (await client.get("/v1/models/fast")).status == 401


async def test_a_model_no_live_worker_serves_is_a_400_naming_model(
    api_client: ApiClientFactory, broker: MemoryBroker, start_worker: StartWorker
) -> None:
    client = await api_client(broker=broker)
    await start_worker("w1", model_aliases={"fast": ("echo",)})
    await wait_for_json(client, "/health", lambda b: b["workers"] == 1)

    for model in ("anthropic/claude", "slow", "fast/x"):
        response = await client.post(
            "/v1/tasks", json={"prompt": "x", "model": model}, headers=ACME
        )
        assert response.status == 400, model
        problem = await response.json()
        assert [e["field"] for e in problem["errors"]] == ["model"]
        assert "echo" in problem["errors"][0]["message"]  # what is served instead
        assert "fast" in problem["errors"][0]["message"]

    for body in (
        {"prompt": "x"},
        {"prompt": "x", "model": "fast"},
        {"prompt": "x", "model": "echo"},
    ):
        response = await client.post("/v1/tasks", json=body, headers=ACME)
        assert response.status == 202, body
        task = await response.json()
        done = await wait_for_json(
            client, f"/v1/tasks/{task['id']}", lambda b: b["status"] == "succeeded", headers=ACME
        )
        assert done["result"]["text"] == "x"


async def test_a_stopped_worker_drops_out(
    api_client: ApiClientFactory, broker: MemoryBroker, start_worker: StartWorker
) -> None:
    client = await api_client(broker=broker)
    worker = await start_worker("w1")
    await wait_for_json(client, "/health", lambda b: b["workers"] == 1)
    worker.stop()
    await wait_for_json(client, "/health", lambda b: b["workers"] == 0)
    assert ids(await (await client.get("/v1/models", headers=ACME)).json()) == []


async def test_model_responses_match_the_document(
    api_client: ApiClientFactory, broker: MemoryBroker, start_worker: StartWorker
) -> None:
    client = await api_client(broker=broker)
    call = Checked(client, await fetch_document(client))
    await start_worker("w1", model_aliases={"fast": ("echo", "echo/fast")})
    await wait_for_json(client, "/health", lambda b: b["workers"] == 1)

    await call("GET", "/health")
    await call("GET", "/v1/models", headers=ACME)
    await call("GET", "/v1/models")
    template = "/v1/models/{model}"
    await call("GET", template, "/v1/models/fast", headers=ACME)
    await call("GET", template, "/v1/models/nope", headers=ACME)
    await call("GET", template, "/v1/models/fast")
    await call("POST", "/v1/tasks", json={"prompt": "x", "model": "nope/x"}, headers=ACME)
    assert {(s[1], s[2]) for s in call.seen} >= {
        ("/health", 200),
        ("/v1/models", 200),
        ("/v1/models", 401),
        (template, 200),
        (template, 404),
        (template, 401),
        ("/v1/tasks", 400),
    }


MODELS = ("echo", " echo/x ", "fast", "fast/x", "slow", "\ufefffast", "echox", "openai /x", "")


async def test_the_served_document_says_which_models_the_live_workers_serve(
    api_client: ApiClientFactory, broker: MemoryBroker, start_worker: StartWorker
) -> None:
    client = await api_client(broker=broker)
    alone = await fetch_document(client)
    schemas = alone["components"]["schemas"]
    # No worker alive: any model that is not blank.
    assert schemas["TaskSubmission"]["properties"]["model"]["pattern"] == NOT_BLANK_PATTERN
    await start_worker("w1", model_aliases={"fast": ("echo",)})
    await wait_for_json(client, "/health", lambda b: b["workers"] == 1)

    document = await fetch_document(client)
    schemas = document["components"]["schemas"]
    rule = schemas["TaskSubmission"]["properties"]["model"]["pattern"]
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["pattern"] == rule
    pattern = re.compile(rule)
    for model in MODELS:
        response = await client.post(
            "/v1/tasks", json={"prompt": "x", "model": model}, headers=ACME
        )
        if is_blank(model):
            assert response.status == 400  # blank: refused by the schema's own pattern
            continue
        # The document and the server agree on every name.
        expected = 202 if pattern.search(model) else 400
        assert response.status == expected, (model, response.status)


# -- the directory: one broker read per window, shared ------------------------------------


class CountingBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.down = False

    async def members(self, group: str) -> dict[str, dict[str, Any]]:
        self.reads += 1
        await asyncio.sleep(0)  # a round trip: concurrent callers overlap
        if self.down:
            raise BrokerUnavailable("down")
        return await super().members(group)


ADVERT = WorkerAdvert(consumer="w1", providers=("echo", "openai"), default_model="echo")


async def test_the_directory_reads_the_broker_once_per_window() -> None:
    broker = CountingBroker()
    now = [100.0]
    group = presence_group("tasks")
    directory = WorkerDirectory(broker, group, max_age=1.5, clock=lambda: now[0])
    await broker.announce(group, "w1", encode_advert(ADVERT), ttl=60)

    results = await asyncio.gather(*(directory.adverts() for _ in range(50)))
    assert broker.reads == 1
    assert all(result == (ADVERT,) for result in results)
    now[0] += 1.0
    await directory.adverts()
    assert broker.reads == 1
    now[0] += 1.0
    await directory.adverts()
    assert broker.reads == 2
    await broker.close()


async def test_an_unreadable_broker_means_no_worker_known(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = CountingBroker()
    broker.down = True
    now = [0.0]
    directory = WorkerDirectory(broker, presence_group("tasks"), clock=lambda: now[0])
    for _ in range(3):
        assert await directory.adverts() == ()
        now[0] += 10
    warnings = [r for r in caplog.records if r.name == "orchestrator_api.workers"]
    assert len(warnings) == 1  # once per outage
    await broker.close()


async def test_a_malformed_advert_is_skipped() -> None:
    broker = MemoryBroker()
    group = presence_group("tasks")
    await broker.announce(group, "bad", {"consumer": 3}, ttl=60)
    await broker.announce(group, "w1", encode_advert(ADVERT), ttl=60)
    assert await WorkerDirectory(broker, group).adverts() == (ADVERT,)
    await broker.close()


def test_unserved_model_names_nothing_for_no_model_or_no_worker() -> None:
    assert unserved_model([ADVERT], None) is None
    assert unserved_model([ADVERT], "openai/gpt-4o") is None
    assert unserved_model([], "anthropic/claude") is None
    assert "anthropic/claude" in (unserved_model([ADVERT], "anthropic/claude") or "")
