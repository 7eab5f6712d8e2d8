"""The provider seam: the echo provider, model routing, and error classification."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from orchestrator_tasks.messages import ChatMessage, Usage
from orchestrator_worker.providers import (
    AuthenticationFailed,
    CompletionRequest,
    EchoProvider,
    Finish,
    InvalidModel,
    InvalidRequest,
    Provider,
    ProviderError,
    ProviderRegistry,
    ProviderTimeout,
    RateLimited,
    ServerError,
    default_registry,
    from_http_status,
    parse_retry_after,
)
from tests.worker.support import FakeProvider


async def answer(provider: Provider, prompt: str, **parameters: Any) -> tuple[list[str], Finish]:
    chunks: list[str] = []
    finish: Finish | None = None
    async for item in provider.stream(
        CompletionRequest.of(model="echo", prompt=prompt, parameters=parameters)
    ):
        if isinstance(item, str):
            chunks.append(item)
        else:
            finish = item
    assert finish is not None, "a stream ends with a Finish"
    return chunks, finish


@pytest.mark.parametrize(
    "prompt", ["hello", "  lead and trail  ", "tabs\tand\nnewlines\n\n", "", "   ", "ünï ☃ 😀"]
)
@pytest.mark.parametrize("chunk_delay_ms", [0, 1])
async def test_echo_chunks_join_back_to_the_prompt(prompt: str, chunk_delay_ms: int) -> None:
    chunks, finish = await answer(EchoProvider(), prompt, chunk_delay_ms=chunk_delay_ms)

    assert "".join(chunks) == prompt
    assert all(chunks)
    assert finish.finish_reason == "stop"


async def test_echo_streams_one_word_per_chunk_with_a_chunk_delay() -> None:
    chunks, _ = await answer(EchoProvider(), " one two  three", chunk_delay_ms=1)

    assert chunks == [" ", "one ", "two  ", "three"]


async def test_echo_without_a_delay_sends_runs_of_whole_words() -> None:
    prompt = " ".join(f"word{i:03d}" for i in range(200))  # 1,599 characters
    chunks, _ = await answer(EchoProvider(), prompt)

    assert "".join(chunks) == prompt
    assert len(chunks) > 5
    assert all(len(chunk) <= 200 for chunk in chunks)
    assert all(chunk.endswith(" ") for chunk in chunks[:-1])


async def test_echo_keeps_an_overlong_word_whole() -> None:
    prompt = "short " + "x" * 500 + " tail"
    chunks, _ = await answer(EchoProvider(), prompt)

    assert chunks == ["short ", "x" * 500 + " ", "tail"]


async def test_echo_counts_words_as_tokens() -> None:
    request = CompletionRequest.of(model="echo", prompt="a b c", system="be nice")
    items = [item async for item in EchoProvider().stream(request)]

    assert items[-1] == Finish(usage=Usage(input_tokens=5, output_tokens=3), finish_reason="stop")


async def test_echo_latency_comes_before_the_first_chunk() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = EchoProvider().stream(
        CompletionRequest.of(model="echo", prompt="x y", parameters={"latency_ms": 50})
    )
    first = await anext(stream)
    waited = loop.time() - started
    rest = [item async for item in stream]

    assert first == "x y"
    assert waited >= 0.04  # a lower bound only: sleeping never ends early
    assert isinstance(rest[0], Finish)


@pytest.mark.parametrize(
    "parameters",
    [
        {"latency_ms": "slow"},
        {"latency_ms": -1},
        {"latency_ms": True},
        {"latency_ms": 10**12},
        {"chunk_delay_ms": [1]},
        {"fail": "everything"},
    ],
)
def test_echo_rejects_unusable_parameters(parameters: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        EchoProvider().stream(CompletionRequest.of(model="echo", prompt="p", parameters=parameters))


@pytest.mark.parametrize(
    ("fail", "error"),
    [("rate_limit", RateLimited), ("timeout", ProviderTimeout), ("server_error", ServerError)],
)
async def test_echo_can_be_asked_to_fail(fail: str, error: type[ProviderError]) -> None:
    with pytest.raises(error) as raised:
        await answer(EchoProvider(), "p", fail=fail)

    assert raised.value.type == fail
    assert raised.value.retryable


def test_model_names_route_by_prefix() -> None:
    fake = FakeProvider(name="openai")
    registry = ProviderRegistry([EchoProvider(), fake], default_model="echo")

    assert registry.resolve("openai/gpt-4o-mini").provider is fake
    assert registry.resolve("openai/gpt-4o-mini").model == "gpt-4o-mini"
    assert registry.resolve("openai/ft:gpt/x").model == "ft:gpt/x"
    assert registry.resolve("echo").model == "echo"
    assert registry.resolve(None).provider.name == "echo"
    assert registry.resolve("").provider.name == "echo"
    assert registry.names == ["echo", "openai"]


def test_an_unknown_prefix_is_an_invalid_model() -> None:
    with pytest.raises(InvalidModel) as raised:
        default_registry().resolve("gemini/gemini-2.0-flash")

    assert raised.value.type == "invalid_model"
    assert not raised.value.retryable


async def test_the_registry_closes_every_provider() -> None:
    fake = FakeProvider()
    registry = ProviderRegistry([fake])

    await registry.close()

    assert fake.closed


def test_the_fake_and_echo_satisfy_the_protocol() -> None:
    assert isinstance(EchoProvider(), Provider)
    assert isinstance(FakeProvider(), Provider)


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (429, RateLimited, True),
        (408, ProviderTimeout, True),
        (504, ProviderTimeout, True),
        (500, ServerError, True),
        (503, ServerError, True),
        (401, AuthenticationFailed, False),
        (403, AuthenticationFailed, False),
        (400, InvalidRequest, False),
        (422, InvalidRequest, False),
    ],
)
def test_http_statuses_are_classified(
    status: int, error: type[ProviderError], retryable: bool
) -> None:
    classified = from_http_status(status, "upstream said no", retry_after=2.0)

    assert type(classified) is error
    assert classified.retryable is retryable
    assert classified.retry_after == 2.0
    assert str(status) in classified.message


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == pytest.approx(60.0)


async def test_echo_answers_the_last_user_message_and_counts_every_message() -> None:
    conversation = (
        ChatMessage(role="system", content="be nice"),
        ChatMessage(role="user", content="first question"),
        ChatMessage(role="assistant", content="an answer"),
        ChatMessage(role="user", content="second one"),
        ChatMessage(role="assistant", content="pending"),
    )
    request = CompletionRequest(model="echo", messages=conversation)

    items = [item async for item in EchoProvider().stream(request)]

    assert items == ["second one", Finish(usage=Usage(9, 2), finish_reason="stop")]


async def test_echo_answers_json_object_as_the_text_wrapped_in_json() -> None:
    chunks, _ = await answer(
        EchoProvider(), 'say "hi"\nplease', response_format={"type": "json_object"}
    )

    assert orjson.loads("".join(chunks)) == {"text": 'say "hi"\nplease'}


async def test_echo_refuses_a_json_schema() -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"type": "object"}},
    }
    with pytest.raises(InvalidRequest, match="JSON schema"):
        await answer(EchoProvider(), "p", response_format=response_format)
