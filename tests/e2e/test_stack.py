"""The whole system as the local deployment runs it: ``deployment/local/stack.py up`` starts a
private redis-server (AOF), ``ai-orchestrator api`` and two ``ai-orchestrator worker``
processes, all exporting traces to an in-process OTLP receiver.

These tests share one stack (none of them disturbs the others): volume, streaming, tenant
isolation and the cross-service trace. Fault tests live in ``test_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
import pytest
import redis.asyncio as aioredis

from tests.e2e.support import (
    ROOT,
    STACK_SCRIPT,
    Api,
    Event,
    clean_env,
    final_attempt_text,
    prompt_of,
    serving_in_thread,
    wait_until,
)
from tests.support.fake_llm import FakeLLM
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ALPHA_KEY = "e2e-alpha-key-0123456789abcdef"
BETA_KEY = "e2e-beta-key-fedcba9876543210"
API_APP_ID = "e2e-api"
WORKER_APP_ID = "e2e-worker"
RESULTS_STREAM = "results"


@attrs.frozen
class Stack:
    url: str
    redis_url: str
    pids: dict[str, int]
    logs: Path
    receiver: OtlpReceiver


def _run_stack(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STACK_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        # Export spans every 100 ms so the trace test need not wait for the default 5 s.
        env=clean_env(OTEL_BSP_SCHEDULE_DELAY="100"),
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the module, brought down (by its recorded PIDs) at the end."""
    directory = tmp_path_factory.mktemp("stack")
    api_env = directory / "api_env"
    api_env.write_text(
        f"APP_ID={API_APP_ID}\nAPI_KEYS=alpha:{ALPHA_KEY},beta:{BETA_KEY}\nLOG_LEVEL=INFO\n",
        encoding="utf-8",
    )
    worker_env = directory / "worker_env"
    worker_env.write_text(
        f"APP_ID={WORKER_APP_ID}\nNUMBER_OF_WORKERS=64\nDEFAULT_MODEL=echo\nLEASE_SECONDS=10\n",
        encoding="utf-8",
    )
    state_dir = directory / "state"
    fake = FakeLLM()  # the OpenAI-compatible API the workers' openai provider calls
    with (
        OtlpReceiver().in_thread() as receiver,
        serving_in_thread(fake.start, fake.close),
    ):
        with worker_env.open("a", encoding="utf-8") as env_file:
            env_file.write(f"OPENAI_BASE_URL={fake.openai_base_url}\n")
        result = _run_stack(
            "up",
            "--state-dir", str(state_dir),
            "--workers", "2",
            "--api-port", "0",
            "--api-env", str(api_env),
            "--worker-env", str(worker_env),
            "--jaeger-uri", receiver.host_port,
            "--json",
            "--timeout", "90",
            timeout=150,
        )  # fmt: skip
        try:
            assert result.returncode == 0, result.stderr
            state: dict[str, Any] = json.loads(result.stdout)
            yield Stack(
                url=state["api_url"],
                redis_url=state["redis_url"],
                pids={name: entry["pid"] for name, entry in state["processes"].items()},
                logs=Path(state["logs"]),
                receiver=receiver,
            )
        finally:
            down = _run_stack("down", "--state-dir", str(state_dir), "--timeout", "20", timeout=90)
            assert down.returncode == 0, down.stderr


@pytest.fixture
async def alpha(stack: Stack) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, stack.url, ALPHA_KEY)


@pytest.fixture
async def beta(stack: Stack) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, stack.url, BETA_KEY)


# ---- 1. volume --------------------------------------------------------------------------


async def test_500_concurrent_tasks_all_succeed_with_their_own_answers(
    stack: Stack, alpha: Api
) -> None:
    prompts = {index: prompt_of(index, words=3) for index in range(500)}
    limit = asyncio.Semaphore(50)

    async def submit(prompt: str) -> dict[str, Any]:
        async with limit:
            return await alpha.submit(prompt)

    accepted = await asyncio.gather(*(submit(prompt) for prompt in prompts.values()))
    ids = [task["id"] for task in accepted]
    assert len(set(ids)) == 500
    assert all(task["status"] == "queued" for task in accepted)

    done = await alpha.wait_all(ids, timeout=120)

    failures = {i: t for i, t in done.items() if t["status"] != "succeeded"}
    assert not failures, f"{len(failures)} failed, e.g. {next(iter(failures.values()))}"
    for task_id, prompt in zip(ids, prompts.values(), strict=True):
        result = done[task_id]["result"]
        assert result["text"] == prompt
        assert result["provider"] == "echo"


# ---- 2. streaming -----------------------------------------------------------------------

#: Prompts that echo streams word by word: with chunk_delay_ms the answer takes ~1.5 s and
#: arrives as several coalesced deltas. One per test: the prompt cache would answer a repeat
#: at once, without streaming.
STREAMING = {"latency_ms": 200, "chunk_delay_ms": 60}


def streamed_prompt(test: str) -> str:
    return " ".join(f"{test}{n}" for n in range(24))


class ResultsTap:
    """Reads the ``results`` stream as the workers write it (plain ``XREAD``, outside the
    API's consumer group, so nothing is taken from the API): what was published, to compare
    with what the API serves. Reading live beats ``XRANGE`` afterwards, which could race
    with the broker trimming acknowledged entries."""

    def __init__(self, redis_url: str) -> None:
        self._client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self._reader: asyncio.Task[None] | None = None
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> ResultsTap:
        newest: Any = await self._client.xrevrange(RESULTS_STREAM, count=1)
        self._reader = asyncio.create_task(self._read(newest[0][0] if newest else "0-0"))
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._client.aclose()

    async def _read(self, last: str) -> None:
        async with asyncio.timeout(120):  # bounded, whatever happens
            while True:
                # RESP2 replies: [(stream, [(entry id, fields), ...])].
                replies: Any = await self._client.xread({RESULTS_STREAM: last}, block=500)
                for _, entries in replies:
                    for entry_id, fields in entries:
                        last = entry_id
                        self.events.append(orjson.loads(fields["payload"]))

    def of(self, task_id: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["task_id"] == task_id]

    async def wait_terminal(self, task_id: str) -> list[dict[str, Any]]:
        def finished() -> bool:
            return any(e["kind"] in ("succeeded", "failed") for e in self.of(task_id))

        await wait_until(f"the terminal event of {task_id} on the stream", finished, timeout=30)
        return self.of(task_id)


def _check_every_delta_served(published: list[dict[str, Any]], served: list[Event]) -> None:
    """The final attempt's deltas as the worker wrote them are exactly the ones served."""
    attempt = max(event["attempt"] for event in published)
    written = sorted(
        (e for e in published if e["attempt"] == attempt and e["kind"] == "delta"),
        key=lambda e: e["seq"],
    )
    got = [e.data["text"] for e in served if e.event == "delta" and e.data["attempt"] == attempt]
    assert got == [e["text"] for e in written]
    terminal = [e for e in published if e["attempt"] == attempt and e["kind"] == "succeeded"]
    assert served[-1].data["text"] == terminal[0]["text"]


def _check_stream(events: list[Event], expected_text: str) -> None:
    """Ids strictly increase, the deltas of the final attempt spell exactly the result
    (without gaps or repeats), the result comes last, once.

    An attempt that streamed any delta sends the text still buffered at its end as a last
    delta before its result (orchestrator_worker/events.py), so the deltas are the answer.
    """
    assert events, "no events"
    ids = [int(event.id) for event in events]
    assert ids == sorted(set(ids)), f"ids repeat or go back: {ids}"
    assert events[0].event == "status"
    assert events[-1].event == "result", [e.event for e in events]
    assert [e.event for e in events].count("result") == 1
    result = events[-1].data
    assert result["text"] == expected_text
    deltas = [e for e in events if e.event == "delta"]
    assert len(deltas) >= 2, f"expected several deltas, got {len(deltas)}"
    assert final_attempt_text(events) == result["text"]


async def test_sse_delivers_every_delta_and_the_result(stack: Stack, alpha: Api) -> None:
    prompt = streamed_prompt("sse")
    async with ResultsTap(stack.redis_url) as tap:
        task = await alpha.submit(prompt, **STREAMING)
        events = await alpha.sse(task["id"], timeout=60)
        published = await tap.wait_terminal(task["id"])
    _check_stream(events, prompt)
    _check_every_delta_served(published, events)
    # Read again after the end: the same log, from the first event.
    again = await alpha.sse(task["id"], timeout=30)
    assert again == events


async def test_websocket_delivers_every_delta_and_the_result(stack: Stack, alpha: Api) -> None:
    prompt = streamed_prompt("ws")
    async with ResultsTap(stack.redis_url) as tap:
        task = await alpha.submit(prompt, **STREAMING)
        frames = await alpha.ws(task["id"], timeout=60)
        published = await tap.wait_terminal(task["id"])
    _check_stream(frames, prompt)
    _check_every_delta_served(published, frames)
    assert frames == await alpha.sse(task["id"], timeout=30)


async def test_sse_resumes_after_last_event_id_without_loss_or_repeat(alpha: Api) -> None:
    prompt = streamed_prompt("resume")
    task = await alpha.submit(prompt, **STREAMING)
    first: list[Event] = []
    # Hang up mid-stream, after the second delta.
    async with contextlib.aclosing(alpha.sse_stream(task["id"], timeout=60)) as stream:
        async for event in stream:
            first.append(event)
            if sum(e.event == "delta" for e in first) >= 2:
                break
    assert first[-1].event == "delta", "the answer ended before the test could hang up"
    rest = await alpha.sse(task["id"], last_event_id=first[-1].id, timeout=60)

    joined = first + rest
    _check_stream(joined, prompt)
    assert rest, "nothing after the resume point"
    assert int(rest[0].id) > int(first[-1].id)
    # The whole log, read in one go now the task is done, is exactly the two parts.
    assert joined == await alpha.sse(task["id"], timeout=30)


async def test_websocket_resumes_after_last_event_id(alpha: Api) -> None:
    prompt = streamed_prompt("wsresume")
    task = await alpha.submit(prompt, **STREAMING)
    full = await alpha.sse(task["id"], timeout=60)
    middle = len(full) // 2
    rest = await alpha.ws(task["id"], last_event_id=full[middle - 1].id, timeout=30)
    assert rest == full[middle:]


# ---- 5. tenants -------------------------------------------------------------------------


async def test_tenants_see_only_their_own_tasks(alpha: Api, beta: Api) -> None:
    mine = await alpha.submit("alpha's secret prompt")
    theirs = await beta.submit("beta's secret prompt")
    assert (await alpha.wait_done(mine["id"]))["result"]["text"] == "alpha's secret prompt"
    assert (await beta.wait_done(theirs["id"]))["result"]["text"] == "beta's secret prompt"

    for reader, other in ((alpha, theirs["id"]), (beta, mine["id"])):
        status, body = await reader.get(other)
        assert status == 404, body
        assert "secret" not in str(body)
        async with reader.session.get(
            f"{reader.base}/v1/tasks/{other}/events", headers=reader.headers
        ) as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await reader.ws(other, timeout=10)
        assert refused.value.status == 404


async def test_requests_without_a_valid_key_are_refused(stack: Stack, alpha: Api) -> None:
    task = await alpha.submit("for alpha only")
    nobody = Api(alpha.session, stack.url, None)
    wrong = Api(alpha.session, stack.url, "not-a-key")
    for client in (nobody, wrong):
        status, _, body = await client.post_task("x")
        assert status == 401, body
        assert (await client.get(task["id"]))[0] == 401


# ---- 6. one trace across both services --------------------------------------------------


def _one(spans: list[ReceivedSpan], name: str, service: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.service_name == service]
    assert found, (
        f"no {name!r} span from {service}; got {[(s.service_name, s.name) for s in spans]}"
    )
    return found[0]


async def test_one_trace_spans_the_api_the_broker_and_the_worker(stack: Stack, alpha: Api) -> None:
    # 300 ms: long enough for a started event (sent at the first ~100 ms flush tick).
    status, headers, task = await alpha.post_task("trace me", latency_ms=300)
    assert status == 202, task
    traceparent = headers["traceparent"]
    trace_id = traceparent.split("-")[1]
    assert task["trace_id"] == trace_id
    assert (await alpha.wait_done(task["id"]))["status"] == "succeeded"

    def mine() -> list[ReceivedSpan]:
        return [s for s in stack.receiver.spans if s.trace_id == trace_id]

    def complete() -> bool:
        names = {(s.service_name, s.name) for s in mine()}
        return {
            (API_APP_ID, "send tasks"),
            (WORKER_APP_ID, "process tasks"),
            (WORKER_APP_ID, "send results"),
            (API_APP_ID, "process results"),
        } <= names

    try:
        await wait_until("the task's trace arrived", complete, timeout=30)
    except AssertionError as exc:
        got = [(s.service_name, s.name, s.kind) for s in mine()]
        raise AssertionError(f"{exc}; spans of trace {trace_id}: {got}") from None
    await asyncio.sleep(1.0)  # the last export batches (100 ms apart) arrive
    spans = mine()
    by_id = {s.span_id: s for s in spans}

    server = [s for s in spans if s.kind == "SERVER" and s.service_name == API_APP_ID]
    assert len(server) == 1, [(s.name, s.kind) for s in spans]
    server_span = server[0]
    assert server_span.parent_span_id == ""
    assert "POST" in server_span.name

    send_tasks = _one(spans, "send tasks", API_APP_ID)
    assert send_tasks.kind == "PRODUCER"
    assert send_tasks.parent_span_id == server_span.span_id

    process_tasks = _one(spans, "process tasks", WORKER_APP_ID)
    assert process_tasks.kind == "CONSUMER"
    assert process_tasks.parent_span_id == send_tasks.span_id
    assert send_tasks.span_id in {link.span_id for link in process_tasks.links}

    worker_children = [s for s in spans if s.parent_span_id == process_tasks.span_id]
    send_results = [s for s in worker_children if s.name == "send results"]
    assert send_results, "no send results span under process tasks"
    assert all(s.kind == "PRODUCER" and s.service_name == WORKER_APP_ID for s in send_results)

    process_results = [s for s in spans if s.name == "process results"]
    assert all(s.service_name == API_APP_ID and s.kind == "CONSUMER" for s in process_results)
    send_result_ids = {s.span_id for s in send_results}
    assert all(s.parent_span_id in send_result_ids for s in process_results)

    assert {s.service_name for s in spans} == {API_APP_ID, WORKER_APP_ID}

    worker_spans = [s for s in spans if s.service_name == WORKER_APP_ID]
    # The model call is a CLIENT span under "process tasks" (doc/architecture.md).
    provider = [s for s in worker_children if s.kind == "CLIENT"]
    shape = [
        (s.name, s.kind, getattr(by_id.get(s.parent_span_id), "name", "")) for s in worker_spans
    ]
    assert provider, f"no provider call span (CLIENT) under process tasks; worker spans: {shape}"


async def test_a_real_provider_call_is_a_client_span_in_the_tasks_trace(
    stack: Stack, alpha: Api
) -> None:
    """An openai task (against a fake OpenAI-compatible server on loopback) runs the real
    provider client; its call is a ``chat <model>`` CLIENT span under ``process tasks``."""
    status, headers, task = await alpha.post_task("ask the model", model="openai/gpt-e2e")
    assert status == 202, task
    trace_id = headers["traceparent"].split("-")[1]
    done = await alpha.wait_done(task["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["text"] == "ask the model"  # the fake echoes the prompt

    def mine() -> list[ReceivedSpan]:
        return [s for s in stack.receiver.spans if s.trace_id == trace_id]

    def has_call() -> bool:
        names = {s.name for s in mine()}
        return "process tasks" in names and any(s.kind == "CLIENT" for s in mine())

    try:
        await wait_until("the model call's span arrived", has_call, timeout=30)
    except AssertionError as exc:
        got = [(s.service_name, s.name, s.kind) for s in mine()]
        raise AssertionError(f"{exc}; spans of trace {trace_id}: {got}") from None
    spans = mine()
    process_tasks = _one(spans, "process tasks", WORKER_APP_ID)
    call = next(s for s in spans if s.kind == "CLIENT")
    assert call.service_name == WORKER_APP_ID
    assert call.parent_span_id == process_tasks.span_id
    assert call.name == "chat gpt-e2e"
    assert call.attributes.get("gen_ai.provider.name") == "openai"
    assert "ask the model" not in str(call.attributes)  # no content on spans by default
