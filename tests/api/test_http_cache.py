"""Parameters checked at submit, ``cost_usd``, and the prompt cache over real HTTP.

The first tests drive the in-memory store by hand (as the worker would); the last ones run a
real ``Worker`` on the same in-memory broker with a counting ``echo`` provider, to show what
the cache saves: provider calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import TracerProvider

from orchestrator_api.app import create_app
from orchestrator_api.config import ApiSettings
from orchestrator_api.store.memory import MemoryTaskStore
from orchestrator_broker.memory import MemoryBroker
from orchestrator_tasks.messages import EventKind, ResultEvent, Usage
from orchestrator_worker.config import WorkerSettings
from orchestrator_worker.providers import EchoProvider, ProviderRegistry
from orchestrator_worker.providers.protocol import CompletionRequest, StreamItem
from orchestrator_worker.worker import Worker
from tests.api.conftest import ACME, API_KEYS, GLOBEX, ApiClientFactory, api_state
from tests.api.test_http_openapi import Checked, fetch_document
from tests.api.test_http_streaming import messages, read_sse
from tests.api.test_http_tasks import problem_of, published

HANG = 30.0


async def submit(client: TestClient[Any, Any], body: dict[str, Any], headers: Any = ACME) -> Any:
    response = await client.post("/v1/tasks", json=body, headers=headers)
    assert response.status == 202, await response.text()
    return await response.json()


async def finish(client: TestClient[Any, Any], task_id: str, text: str = "the answer") -> None:
    """Apply a worker's success (with a cost) to the task, as the results consumer would."""
    await api_state(client).store.apply(
        ResultEvent(
            task_id=task_id,
            tenant="acme",
            kind=EventKind.SUCCEEDED,
            attempt=1,
            seq=0,
            at=time.time(),
            text=text,
            provider="echo",
            model="echo",
            usage=Usage(input_tokens=2, output_tokens=2),
            finish_reason="stop",
            cost_usd=0.25,
        )
    )


# -- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "openai/gpt-4o", "parameters": {"top_k": 5}}, "parameters.top_k"),
        ({"model": "openai/gpt-4o", "parameters": {"latency_ms": 5}}, "parameters.latency_ms"),
        ({"model": "gemini/gemini-2.5-flash", "parameters": {"bogus": 1}}, "parameters.bogus"),
        ({"model": "echo", "parameters": {"temperature": 3}}, "parameters.temperature"),
        ({"model": "echo", "parameters": {"fail": "nope"}}, "parameters.fail"),
        ({"parameters": {"latency_ms": -1}}, "parameters.latency_ms"),
        ({"cache": "no"}, "cache"),
    ],
)
async def test_an_unsupported_or_invalid_parameter_is_a_400_naming_it(
    api_client: ApiClientFactory, body: dict[str, Any], field: str
) -> None:
    client = await api_client()
    response = await client.post("/v1/tasks", json={"prompt": "x", **body}, headers=ACME)
    problem = await problem_of(response, 400)
    assert [error["field"] for error in problem["errors"]] == [field]
    assert problem["errors"][0]["message"]
    assert await published(api_state(client).broker) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "openai/gpt-4o", "parameters": {"temperature": 0.2, "max_tokens": 64}},
        {"model": "openai/o3", "parameters": {"reasoning_effort": "low", "stop": ["\n"]}},
        {"model": "gemini/gemini-2.5-flash", "parameters": {"top_k": 5, "thinking_budget": 0}},
        {"model": "echo", "parameters": {"latency_ms": 5, "chunk_delay_ms": 1, "top_k": 1}},
        {"model": "echo", "parameters": {"fail": "rate_limit"}},
        {"model": "anthropic/claude", "parameters": {"something_new": True}},
        {"parameters": {"latency_ms": 5, "temperature": None}},
        {"cache": False},
        {"cache": None},
    ],
)
async def test_supported_parameters_are_accepted_and_passed_on(
    api_client: ApiClientFactory, body: dict[str, Any]
) -> None:
    client = await api_client()
    await submit(client, {"prompt": "x", **body})
    [message] = await published(api_state(client).broker)  # type: ignore[arg-type]
    assert message.parameters == body.get("parameters", {})


# -- cost -------------------------------------------------------------------------------------


async def test_the_result_shows_its_cost_in_the_task_and_the_result_event(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    task = await submit(client, {"prompt": "x"})
    await finish(client, task["id"])

    done = await (await client.get(f"/v1/tasks/{task['id']}", headers=ACME)).json()
    assert done["result"]["cost_usd"] == 0.25
    blocks = messages(
        await read_sse(await client.get(f"/v1/tasks/{task['id']}/events", headers=ACME))
    )
    assert blocks[-1]["event"] == "result"
    assert blocks[-1]["data"]["cost_usd"] == 0.25


# -- the cache ---------------------------------------------------------------------------------


async def test_an_identical_submission_after_a_success_is_answered_from_the_cache(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    body = {"prompt": "x", "model": "echo", "system": "s", "parameters": {"latency_ms": 1}}
    first = await submit(client, body)
    await finish(client, first["id"])

    response = await client.post("/v1/tasks", json={**body, "metadata": {"n": 2}}, headers=ACME)

    assert response.status == 202
    hit = await response.json()
    assert response.headers["Location"] == f"/v1/tasks/{hit['id']}"
    assert hit["id"] != first["id"]
    assert hit["status"] == "succeeded"
    assert (hit["cached"], hit["joined"], hit["attempts"]) == (True, False, 0)
    assert hit["metadata"] == {"n": 2}
    assert hit["result"]["text"] == "the answer"
    assert hit["result"]["cost_usd"] == 0.0
    assert await (await client.get(f"/v1/tasks/{hit['id']}", headers=ACME)).json() == hit
    assert len(await published(api_state(client).broker)) == 1  # type: ignore[arg-type]
    events = messages(
        await read_sse(await client.get(f"/v1/tasks/{hit['id']}/events", headers=ACME))
    )
    assert [(e["event"], e["data"].get("status")) for e in events] == [
        ("status", "queued"),
        ("result", None),
    ]
    assert events[-1]["data"]["text"] == "the answer"
    assert events[-1]["data"]["attempt"] == 0


async def test_an_identical_submission_in_flight_joins_it(api_client: ApiClientFactory) -> None:
    client = await api_client()
    first = await submit(client, {"prompt": "x"})
    joined = await submit(client, {"prompt": "x", "metadata": {"me": 2}})

    assert joined["id"] != first["id"]
    assert (joined["status"], joined["joined"], joined["cached"]) == ("queued", True, False)
    assert joined["metadata"] == {"me": 2}
    assert len(await published(api_state(client).broker)) == 1  # type: ignore[arg-type]

    await finish(client, first["id"])
    done = await (await client.get(f"/v1/tasks/{joined['id']}", headers=ACME)).json()
    assert (done["status"], done["joined"], done["cached"]) == ("succeeded", True, True)
    assert done["result"]["text"] == "the answer"
    assert done["result"]["cost_usd"] == 0.0
    leader = await (await client.get(f"/v1/tasks/{first['id']}", headers=ACME)).json()
    assert (leader["cached"], leader["joined"], leader["result"]["cost_usd"]) == (
        False,
        False,
        0.25,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "y"},
        {"model": "echo"},
        {"system": "be brief"},
        {"parameters": {"latency_ms": 2}},
        {"cache": False},
    ],
)
async def test_a_different_request_or_an_opt_out_runs_on_its_own(
    api_client: ApiClientFactory, change: dict[str, Any]
) -> None:
    client = await api_client()
    first = await submit(client, {"prompt": "x", "parameters": {"latency_ms": 1}})
    await finish(client, first["id"])

    other = await submit(client, {"prompt": "x", "parameters": {"latency_ms": 1}, **change})

    assert (other["status"], other["cached"], other["joined"]) == ("queued", False, False)
    assert len(await published(api_state(client).broker)) == 2  # type: ignore[arg-type]


async def test_parameter_order_does_not_matter(api_client: ApiClientFactory) -> None:
    client = await api_client()
    first = await submit(client, {"prompt": "x", "parameters": {"top_p": 1, "seed": 3}})
    again = await submit(client, {"prompt": "x", "parameters": {"seed": 3, "top_p": 1}})
    assert again["joined"] is True
    assert first["joined"] is False


async def test_an_opted_out_task_fills_no_cache_and_leads_nothing(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    private = await submit(client, {"prompt": "x", "cache": False})
    assert (await submit(client, {"prompt": "x"}))["joined"] is False  # not joined to it
    await finish(client, private["id"])
    assert (await submit(client, {"prompt": "x", "metadata": {}}))["cached"] is False


async def test_another_tenant_never_gets_the_answer_nor_joins(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    mine = await submit(client, {"prompt": "secret"})
    theirs = await submit(client, {"prompt": "secret"}, GLOBEX)
    assert theirs["joined"] is False
    await finish(client, mine["id"])

    later = await submit(client, {"prompt": "secret"}, GLOBEX)

    assert (later["cached"], later["joined"]) == (False, True)  # joined globex's own task
    assert len(await published(api_state(client).broker)) == 2  # type: ignore[arg-type]


async def test_an_idempotency_key_replays_before_the_cache_applies(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    first = await submit(client, {"prompt": "x"})
    await finish(client, first["id"])
    keyed = await submit(client, {"prompt": "x"})
    response = await client.post(
        "/v1/tasks", json={"prompt": "x"}, headers={**ACME, "Idempotency-Key": "k"}
    )
    assert response.status == 202
    replay = await client.post(
        "/v1/tasks", json={"prompt": "x"}, headers={**ACME, "Idempotency-Key": "k"}
    )
    assert replay.status == 200
    assert (await replay.json())["id"] == (await response.json())["id"]
    assert keyed["cached"] is True


async def test_cached_and_joined_tasks_match_the_document(api_client: ApiClientFactory) -> None:
    client = await api_client()
    call = Checked(client, await fetch_document(client))
    status, first = await call("POST", "/v1/tasks", json={"prompt": "x"}, headers=ACME)
    assert status == 202
    status, joined = await call(
        "POST", "/v1/tasks", json={"prompt": "x", "cache": None}, headers=ACME
    )
    assert joined["joined"] is True
    await finish(client, first["id"])
    status, hit = await call("POST", "/v1/tasks", json={"prompt": "x"}, headers=ACME)
    assert hit["cached"] is True
    for task in (first, joined, hit):
        await call("GET", "/v1/tasks/{task_id}", f"/v1/tasks/{task['id']}", headers=ACME)


def test_the_document_describes_every_known_parameter() -> None:
    from orchestrator_api.openapi import build_document
    from orchestrator_tasks.parameters import PARAMETERS

    schema = build_document()["components"]["schemas"]["TaskSubmission"]
    assert set(schema["properties"]["parameters"]["properties"]) == set(PARAMETERS)


# -- with a real worker -------------------------------------------------------------------------


class CountingEcho(EchoProvider):
    """``echo`` that counts its calls (the provider calls the cache saves)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        self.calls += 1
        return super().stream(request)


@attrs.frozen
class Running:
    client: TestClient[Any, Any]
    echo: CountingEcho


@pytest.fixture
async def running(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> AsyncIterator[Running]:
    """The API and a real Worker on one in-memory broker; the worker's echo counts calls."""
    settings = ApiSettings(api_keys=API_KEYS, host="127.0.0.1", port=0)
    broker = MemoryBroker()
    store = MemoryTaskStore(settings.cache_ttl_seconds)
    app = create_app(settings, broker=broker, store=store, tracer_provider=TracerProvider())

    async def close(_: web.Application) -> None:
        await store.close()

    app.on_cleanup.append(close)
    client = await aiohttp_client(app)
    echo = CountingEcho()
    worker = Worker(
        broker,
        WorkerSettings(consumer_name="cache-worker", concurrency=8, shutdown_grace=2.0),
        providers=ProviderRegistry([echo]),
    )
    task = asyncio.create_task(worker.run())
    try:
        yield Running(client, echo)
    finally:
        worker.stop(force=True)
        async with asyncio.timeout(HANG):
            await task
        await client.close()
        await broker.close()


async def wait_done(client: TestClient[Any, Any], task_id: str, headers: Any = ACME) -> Any:
    async with asyncio.timeout(HANG):  # hang guard only
        while True:
            task = await (await client.get(f"/v1/tasks/{task_id}", headers=headers)).json()
            if task["status"] in ("succeeded", "failed"):
                return task
            await asyncio.sleep(0.02)


async def test_a_repeated_prompt_calls_the_provider_once(running: Running) -> None:
    client = running.client
    body = {"prompt": "say it once", "model": "echo"}
    first = await wait_done(client, (await submit(client, body))["id"])
    assert first["result"]["text"] == "say it once"

    second = await submit(client, body)

    assert (second["status"], second["cached"]) == ("succeeded", True)
    assert second["result"]["text"] == "say it once"
    assert running.echo.calls == 1


async def test_concurrent_identical_prompts_share_one_provider_call(running: Running) -> None:
    client = running.client
    body = {"prompt": "all at once", "model": "echo", "parameters": {"latency_ms": 300}}
    accepted = await asyncio.gather(*(submit(client, body) for _ in range(5)))

    done = [await wait_done(client, task["id"]) for task in accepted]

    assert len({task["id"] for task in done}) == 5
    assert {task["status"] for task in done} == {"succeeded"}
    assert {task["result"]["text"] for task in done} == {"all at once"}
    assert sorted(task["joined"] for task in done) == [False, True, True, True, True]
    assert running.echo.calls == 1


async def test_opting_out_or_another_tenant_calls_the_provider_again(running: Running) -> None:
    client = running.client
    body = {"prompt": "again and again", "model": "echo"}
    await wait_done(client, (await submit(client, body))["id"])

    private = await submit(client, {**body, "cache": False})
    theirs = await submit(client, body, GLOBEX)
    await wait_done(client, private["id"])
    await wait_done(client, theirs["id"], GLOBEX)

    assert (private["cached"], theirs["cached"]) == (False, False)
    assert running.echo.calls == 3


async def test_shared_tasks_are_counted_in_the_metrics(api_client: ApiClientFactory) -> None:
    client = await api_client()
    first = await submit(client, {"prompt": "x"})
    await submit(client, {"prompt": "x"})  # joined
    await finish(client, first["id"])
    await submit(client, {"prompt": "x"})  # hit
    await submit(client, {"prompt": "x"})  # hit

    text = await (await client.get("/metrics")).text()

    # (prometheus_client writes label names in alphabetical order)
    assert 'orchestrator_api_tasks_shared_total{outcome="joined",tenant="acme"} 1.0' in text
    assert 'orchestrator_api_tasks_shared_total{outcome="hit",tenant="acme"} 2.0' in text
    assert 'orchestrator_api_tasks_accepted_total{model="default",tenant="acme"} 4.0' in text


async def test_the_document_rejects_and_accepts_the_cache_field_as_the_api_does(
    api_client: ApiClientFactory,
) -> None:
    from tests.api.test_http_openapi import validator

    client = await api_client()
    schema = validator(
        await fetch_document(client), {"$ref": "#/components/schemas/TaskSubmission"}
    )
    for body, status in (
        ({"prompt": "x", "cache": "no"}, 400),
        ({"prompt": "x", "cache": 0}, 400),
        ({"prompt": "x", "parameters": {"top_k": 0}}, 400),
        ({"prompt": "x", "parameters": {"stop": []}}, 400),
        ({"prompt": "x", "cache": False}, 202),
        ({"prompt": "x", "cache": True, "parameters": {"stop": "\n", "seed": 1}}, 202),
    ):
        response = await client.post("/v1/tasks", json=body, headers=ACME)
        assert response.status == status, (body, await response.text())
        assert schema.is_valid(body) is (status == 202), body
