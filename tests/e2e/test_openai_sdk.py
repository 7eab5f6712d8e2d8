"""The official ``openai`` SDK against ``POST /v1/chat/completions``: real ``ai-orchestrator
api`` and ``worker`` processes on a throwaway redis-server, the worker's providers calling a
fake OpenAI-compatible API and a fake Gemini API on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import openai
import pytest
import requests

from tests.e2e.support import AI_ORCHESTRATOR, ROOT, clean_env, free_port, serving_in_thread
from tests.support.fake_llm import FakeLLM, Reply
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

KEY = "sdk-acme-key"
LIMITED_KEY = "sdk-limited-key"


@attrs.frozen
class Stack:
    url: str
    fake: FakeLLM
    logs: Path


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("openai-sdk")
    redis = RedisServer(directory / "redis")
    redis.start()
    fake = FakeLLM()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with serving_in_thread(fake.start, fake.close):
            port = free_port()
            common = {"REDIS_URI": redis.url, "LOG_LEVEL": "INFO"}
            api_env = clean_env(
                **common,
                HOST="127.0.0.1",
                PORT=str(port),
                API_KEYS=f"acme:{KEY},limited:{LIMITED_KEY}",
                RATE_LIMITS="limited=1/h",
            )
            worker_env = clean_env(
                **common,
                NUMBER_OF_WORKERS="16",
                METRICS_PORT="0",
                OPENAI_BASE_URL=fake.openai_base_url,
                OPENAI_API_KEY="sk-fake",
                GEMINI_BASE_URL=fake.gemini_base_url,
                GEMINI_API_KEY="gemini-fake",
                MAX_ATTEMPTS="2",
                RETRY_BASE_SECONDS="0.05",
                RETRY_MAX_SECONDS="0.1",
            )
            for name, env in (("api", api_env), ("worker", worker_env)):
                log = directory / f"{name}.log"
                with log.open("wb") as out:
                    processes.append(
                        subprocess.Popen(
                            [AI_ORCHESTRATOR, name],
                            env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            cwd=ROOT,
                        )
                    )
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, processes[0], directory / "api.log")
            yield Stack(url, fake, directory)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        redis.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    stack.fake.reset()
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


CONVERSATION: list[Any] = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def test_a_conversation_arrives_in_order_and_the_answer_comes_back(
    stack: Stack, client: openai.OpenAI
) -> None:
    stack.fake.script(Reply.answer("Ro", "me."))

    raw = client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=CONVERSATION, temperature=0.2, max_tokens=5
    )
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Rome."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    (request,) = stack.fake.requests
    assert request.body["messages"] == CONVERSATION
    assert request.body["temperature"] == 0.2
    assert request.body["max_tokens"] == 5
    # The task behind it, readable by its tenant only.
    task_id = raw.headers["X-Task-Id"]
    task = requests.get(
        f"{stack.url}/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert task.json()["status"] == "succeeded"
    assert task.json()["result"]["text"] == "Rome."
    other = requests.get(
        f"{stack.url}/v1/tasks/{task_id}",
        headers={"Authorization": f"Bearer {LIMITED_KEY}"},
        timeout=10,
    )
    assert other.status_code == 404


def test_a_streamed_answer_arrives_in_chunks_with_usage_last(
    stack: Stack, client: openai.OpenAI
) -> None:
    stack.fake.script(Reply.answer("one ", "two ", "three", delay=0.05))

    with client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as chunks:
        received = list(chunks)

    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "one two three"
    assert received[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in received if c.choices]
    assert finishes[-1] == "stop"
    assert received[-1].choices == []
    assert received[-1].usage is not None
    assert received[-1].usage.completion_tokens > 0


def test_json_mode_is_forwarded_and_answered(stack: Stack, client: openai.OpenAI) -> None:
    stack.fake.script(Reply.answer('{"answer": 4}'))

    completion = client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "2+2 as JSON"}],
        response_format={"type": "json_object"},
    )

    assert json.loads(completion.choices[0].message.content or "") == {"answer": 4}
    assert stack.fake.requests[0].body["response_format"] == {"type": "json_object"}


def test_a_four_turn_conversation_through_gemini(stack: Stack, client: openai.OpenAI) -> None:
    stack.fake.script(Reply.answer("Rome."))

    completion = client.chat.completions.create(
        model="gemini/gemini-2.0-flash", messages=CONVERSATION
    )

    assert completion.choices[0].message.content == "Rome."
    (request,) = stack.fake.requests
    assert request.api == "gemini"
    assert request.body["systemInstruction"] == {"parts": [{"text": "Answer in one word."}]}
    assert [(c["role"], c["parts"][0]["text"]) for c in request.body["contents"]] == [
        ("user", "Capital of France?"),
        ("model", "Paris."),
        ("user", "And of Italy?"),
    ]


def test_a_bad_key_is_the_sdk_s_authentication_error(stack: Stack) -> None:
    with (
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="wrong", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError) as raised,
    ):
        sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 401


def test_an_unsupported_parameter_is_the_sdk_s_bad_request_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert raised.value.param == "n"

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert raised.value.param == "temperature"


def test_a_tenant_over_its_rate_is_the_sdk_s_rate_limit_error(stack: Stack) -> None:
    messages: Any = [{"role": "user", "content": "x"}]
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key=LIMITED_KEY, max_retries=0) as sdk:
        sdk.chat.completions.create(model="echo", messages=messages)  # the one allowed
        with pytest.raises(openai.RateLimitError) as raised:
            sdk.chat.completions.create(model="echo", messages=messages)
    assert raised.value.response.headers["Retry-After"]


def test_a_task_the_provider_failed_is_an_sdk_error_with_its_task(
    stack: Stack, client: openai.OpenAI
) -> None:
    stack.fake.script(Reply.error(400, code="invalid_value"))

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert raised.value.code == "invalid_request"
    assert raised.value.response.headers["X-Task-Id"]


def test_the_sdk_lists_the_models_the_live_workers_serve(client: openai.OpenAI) -> None:
    deadline = time.monotonic() + 30  # the worker's first advert may still be on its way
    while True:
        ids = {model.id for model in client.models.list()}
        if ids or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert "echo" in ids
    assert all(model.object == "model" for model in client.models.list())
    assert client.models.retrieve("echo").id == "echo"
