"""``openai/<model>``: Chat Completions streamed from an OpenAI-compatible server (the fake,
over real HTTP on loopback)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator_broker import MemoryBroker
from orchestrator_tasks.messages import ChatMessage, EventKind, Usage
from orchestrator_worker.providers import (
    AuthenticationFailed,
    CompletionRequest,
    ContentFiltered,
    EchoProvider,
    HttpSettings,
    InvalidModel,
    InvalidRequest,
    MalformedResponse,
    OpenAIProvider,
    OpenAISettings,
    Overloaded,
    Provider,
    ProviderError,
    ProviderRegistry,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    Secret,
    ServerError,
    StreamInterrupted,
)
from orchestrator_worker.providers import _http as http_module
from tests.support.fake_llm import FakeLLM, Reply, collect, free_port
from tests.worker import support

KEY = "sk-test-0123456789"

MakeProvider = Callable[..., OpenAIProvider]


@pytest.fixture
async def make_provider(
    fake: FakeLLM, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> AsyncIterator[MakeProvider]:
    """``make_provider(key=..., base_url=..., read_timeout=..., trace_content=...)``."""
    made: list[OpenAIProvider] = []

    def make(*, key: str | None = KEY, base_url: str | None = None, **http: Any) -> OpenAIProvider:
        settings = OpenAISettings(
            base_url=base_url or fake.openai_base_url,
            api_key=Secret(key) if key else None,
            http=attrs.evolve(HttpSettings(), **http),
        )
        provider = OpenAIProvider(settings, tracer_provider=spans[0])
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


def ask(prompt: str = "hi", *, model: str = "gpt-4o-mini", **fields: Any) -> CompletionRequest:
    return CompletionRequest.of(model=model, prompt=prompt, **fields)


async def test_a_streamed_answer_arrives_in_chunks_and_exactly(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer("Hel", "lo, ", "wörld ☃", "\n", usage=(11, 4)))

    got = await collect(make_provider().stream(ask()))

    assert got.error is None
    assert got.chunks == ["Hel", "lo, ", "wörld ☃", "\n"]
    assert got.finish.usage == Usage(input_tokens=11, output_tokens=4)
    assert got.finish.finish_reason == "stop"


async def test_the_provider_satisfies_the_protocol(make_provider: MakeProvider) -> None:
    assert isinstance(make_provider(), Provider)


async def test_the_request_is_a_streamed_chat_completion_with_usage(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    await collect(make_provider().stream(ask("the prompt", system="be brief")))

    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["model"] == "gpt-4o-mini"
    assert request.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the prompt"},
    ]
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}


async def test_without_a_system_prompt_there_is_only_the_user_message(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    await collect(make_provider().stream(ask("only me")))

    assert fake.requests[0].body["messages"] == [{"role": "user", "content": "only me"}]


async def test_parameters_map_to_chat_completions_fields(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    parameters = {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["\n\n", "END"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "seed": 42,
        "reasoning_effort": "low",
        "max_completion_tokens": None,  # null counts as absent
    }
    await collect(make_provider().stream(ask(parameters=parameters)))

    body = fake.requests[0].body
    sent = {k: body[k] for k in body if k not in ("model", "messages", "stream", "stream_options")}
    assert sent == {k: v for k, v in parameters.items() if v is not None}


async def test_unsupported_parameters_fail_before_any_request(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        make_provider().stream(ask(parameters={"top_k": 3, "temperature": "hot"}))

    assert "parameters.top_k" in raised.value.message
    assert "parameters.temperature" in raised.value.message
    assert fake.count == 0


async def test_the_key_goes_as_a_bearer_token_never_in_the_url(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    await collect(make_provider().stream(ask()))

    [request] = fake.requests
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in request.url
    assert request.query == {}


async def test_without_a_key_no_authorization_header_is_sent(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    got = await collect(make_provider(key=None).stream(ask("local model")))

    assert got.error is None
    assert "Authorization" not in fake.requests[0].headers


async def test_a_wrong_key_is_an_authentication_failure(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.require_key(openai="sk-the-right-one")

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, AuthenticationFailed)
    assert not got.error.retryable
    assert got.error.code == "invalid_api_key"
    assert KEY not in got.error.message


async def test_the_echo_default_answers_with_the_prompt(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    got = await collect(make_provider().stream(ask("one two  three")))

    assert got.chunks == ["one ", "two  ", "three"]


async def test_a_plain_json_completion_is_understood(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer("all ", "at once", as_json=True, usage=(7, 2)))

    got = await collect(make_provider().stream(ask()))

    assert got.text == "all at once"
    assert got.finish.usage == Usage(input_tokens=7, output_tokens=2)
    assert got.finish.finish_reason == "stop"


async def test_a_length_finish_is_reported(fake: FakeLLM, make_provider: MakeProvider) -> None:
    fake.script(Reply.answer("trunc", finish_reason="length"))

    got = await collect(make_provider().stream(ask()))

    assert got.finish.finish_reason == "length"


async def test_a_finish_without_done_still_succeeds(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer("fine", done=False))

    got = await collect(make_provider().stream(ask()))

    assert got.error is None
    assert got.text == "fine"


async def test_usage_is_none_when_the_server_sends_none(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer("x", usage=None))

    got = await collect(make_provider().stream(ask()))

    assert got.finish.usage is None


@pytest.mark.parametrize(
    ("status", "code", "error", "retryable"),
    [
        (400, "context_length_exceeded", InvalidRequest, False),
        (401, "invalid_api_key", AuthenticationFailed, False),
        (403, "unsupported_country_region_territory", AuthenticationFailed, False),
        (404, "model_not_found", InvalidModel, False),
        (422, None, InvalidRequest, False),
        (400, "content_filter", ContentFiltered, False),
        (429, "rate_limit_exceeded", RateLimited, True),
        (429, "insufficient_quota", QuotaExceeded, False),
        (500, None, ServerError, True),
        (502, None, ServerError, True),
        (503, "overloaded", ServerError, True),
        (504, None, ProviderTimeout, True),
        (529, None, Overloaded, True),
    ],
)
async def test_http_errors_are_classified(
    fake: FakeLLM,
    make_provider: MakeProvider,
    status: int,
    code: str | None,
    error: type[ProviderError],
    retryable: bool,
) -> None:
    fake.script(Reply.error(status, code=code, message=f"secret detail {KEY}"))

    got = await collect(make_provider().stream(ask()))

    assert type(got.error) is error
    assert got.error.retryable is retryable
    assert got.error.status == status
    # The code, else the error type (the fake's: by status).
    assert got.error.code == code or (status >= 500) == (got.error.code == "server_error")
    assert str(status) in got.error.message
    assert "secret detail" not in got.error.message  # provider text never passes on
    assert got.chunks == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        (
            {
                "x-ratelimit-remaining-requests": "12",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            360.0,
        ),
        ({"x-ratelimit-reset-requests": "250ms"}, 0.25),
        ({}, None),
    ],
)
async def test_a_rate_limit_carries_the_wait_from_its_headers(
    fake: FakeLLM,
    make_provider: MakeProvider,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    fake.script(Reply.error(429, code="rate_limit_exceeded", headers=headers))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, RateLimited)
    assert got.error.retry_after == (pytest.approx(expected) if expected is not None else None)


async def test_retry_after_may_be_an_http_date(fake: FakeLLM, make_provider: MakeProvider) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    fake.script(Reply.error(503, headers={"Retry-After": when}))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, ServerError)
    assert got.error.retry_after is not None
    assert 100 < got.error.retry_after <= 120


async def test_a_stream_cut_mid_answer_is_retryable_after_the_first_chunks(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.cut("partial ", "answer"))

    got = await collect(make_provider().stream(ask()))

    assert got.chunks == ["partial ", "answer"]
    assert isinstance(got.error, StreamInterrupted)
    assert got.error.retryable


async def test_a_stream_ending_before_its_finish_is_interrupted(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.unfinished("half"))

    got = await collect(make_provider().stream(ask()))

    assert got.chunks == ["half"]
    assert isinstance(got.error, StreamInterrupted)


@pytest.mark.parametrize(
    "raw",
    [
        b"data: {not json\n\n",
        b"data: [1, 2]\n\n",
        b'data: {"choices": [{"index": 0, "delta": {"content": 5}}]}\n\n',
        b'data: {"choices": "many"}\n\n',
        b'data: {"choices": [], "usage": "lots"}\n\n',
    ],
)
async def test_malformed_events_are_malformed_responses(
    fake: FakeLLM, make_provider: MakeProvider, raw: bytes
) -> None:
    fake.script(Reply.malformed(raw))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, MalformedResponse)
    assert got.error.retryable


async def test_a_malformed_json_body_is_a_malformed_response(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.malformed(b"{oops", content_type="application/json"))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, MalformedResponse)


async def test_comments_and_crlf_framing_are_fine(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    raw = (
        b": keep-alive\r\n\r\n"
        b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\r\n\r\n'
        b'data: {"choices": [{"index": 0, "delta": {"content": "b"}, '
        b'"finish_reason": "stop"}]}\r\n\r\ndata: [DONE]\r\n\r\n'
    )
    fake.script(Reply.malformed(raw))

    got = await collect(make_provider().stream(ask()))

    assert got.error is None
    assert got.text == "ab"


async def test_silence_past_the_read_timeout_is_a_timeout(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.stalled(30, "first ", "second", after=1))

    got = await collect(make_provider(read_timeout=1.0).stream(ask()))

    assert got.chunks == ["first "]
    assert isinstance(got.error, ProviderTimeout)
    assert got.error.retryable


async def test_no_response_headers_within_the_read_timeout_is_a_timeout(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer("late", delay=30))

    got = await collect(make_provider(read_timeout=1.0).stream(ask()))

    assert isinstance(got.error, ProviderTimeout)


async def test_a_refused_connection_is_unavailable(make_provider: MakeProvider) -> None:
    provider = make_provider(base_url=f"http://127.0.0.1:{free_port()}/v1")

    got = await collect(provider.stream(ask()))

    assert isinstance(got.error, ProviderUnavailable)
    assert got.error.retryable


async def test_a_content_filter_finish_is_a_refusal(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer(finish_reason="content_filter"))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, ContentFiltered)
    assert not got.error.retryable


async def test_a_model_refusal_is_a_refusal(fake: FakeLLM, make_provider: MakeProvider) -> None:
    fake.script(Reply.answer(refusal="I can't help with that."))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, ContentFiltered)


async def test_an_error_inside_the_stream_is_classified(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(
        Reply.malformed(
            b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
            b'data: {"error": {"message": "boom", "type": "server_error", "code": null}}\n\n'
        )
    )

    got = await collect(make_provider().stream(ask()))

    assert got.chunks == ["a"]
    assert isinstance(got.error, ServerError)
    assert got.error.code == "server_error"


async def test_calls_share_one_session_and_reuse_its_connection(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    provider = make_provider()

    for _ in range(3):
        got = await collect(provider.stream(ask()))
        assert got.error is None

    assert len({request.peer for request in fake.requests}) == 1


async def test_the_answer_does_not_wait_for_a_body_held_open_after_done(
    fake: FakeLLM, make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_module, "DRAIN_SECONDS", 30.0)
    provider = make_provider()
    fake.script(Reply.answer("Hel", "lo", hold=2.0), Reply.answer("again"))

    got = await collect(provider.stream(ask()))

    assert got.error is None
    assert got.chunks == ["Hel", "lo"]
    assert fake.holding == 1, "the answer came while the server still held the body open"
    # The rest of the body is awaited in the background, then its connection reused.
    await support.wait_for(lambda: fake.holding == 0)
    await asyncio.sleep(0.05)
    again = await collect(provider.stream(ask()))
    assert again.chunks == ["again"]
    assert len({request.peer for request in fake.requests}) == 1


async def test_a_body_held_open_past_the_drain_time_loses_its_connection_only(
    fake: FakeLLM, make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_module, "DRAIN_SECONDS", 0.05)
    provider = make_provider()
    fake.script(Reply.answer("slow", hold=5.0), Reply.answer("next"))

    got = await collect(provider.stream(ask()))
    assert got.chunks == ["slow"]
    await asyncio.sleep(0.2)  # past the drain time: that connection is closed

    again = await collect(provider.stream(ask()))
    assert again.chunks == ["next"]
    assert len({request.peer for request in fake.requests}) == 2  # on a new connection


async def test_closing_is_idempotent_and_a_closed_provider_can_be_reused(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    provider = make_provider()
    await collect(provider.stream(ask()))

    await provider.close()
    await provider.close()
    got = await collect(provider.stream(ask("again")))

    assert got.text == "again"


async def test_closing_the_stream_early_releases_the_call(
    fake: FakeLLM,
    make_provider: MakeProvider,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    fake.script(Reply.stalled(30, "first ", "second", after=1))
    stream = make_provider().stream(ask())

    assert await anext(stream) == "first "
    await stream.aclose()  # type: ignore[attr-defined]

    [span] = spans[1].get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "cancelled"


async def test_each_call_is_a_client_span_with_genai_attributes(
    fake: FakeLLM,
    make_provider: MakeProvider,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    fake.script(Reply.answer("a", "b", usage=(9, 2), model="gpt-4o-mini-2024-07-18"))
    parameters = {"temperature": 0.5, "top_p": 0.8, "max_tokens": 10, "stop": "x", "seed": 1}

    await collect(make_provider().stream(ask("secret prompt", system="sys", parameters=parameters)))

    [span] = spans[1].get_finished_spans()
    assert span.name == "chat gpt-4o-mini"
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert attributes["gen_ai.usage.input_tokens"] == 9
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.top_p"] == 0.8
    assert attributes["gen_ai.request.max_tokens"] == 10
    assert attributes["gen_ai.request.seed"] == 1
    assert attributes["gen_ai.request.stop_sequences"] == ("x",)
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == fake.port
    assert str(attributes["gen_ai.response.id"]).startswith("chatcmpl-")
    # Content is opt-in (TRACE_CONTENT): none by default.
    assert not any("messages" in name or "instructions" in name for name in attributes)
    assert "secret prompt" not in str(attributes)


async def test_prompt_and_answer_go_on_the_span_only_when_asked(
    fake: FakeLLM,
    make_provider: MakeProvider,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    fake.script(Reply.answer("the ", "answer"))

    await collect(make_provider(trace_content=True).stream(ask("the prompt", system="sys")))

    [span] = spans[1].get_finished_spans()
    attributes = dict(span.attributes or {})
    assert "the prompt" in str(attributes["gen_ai.input.messages"])
    assert "sys" in str(attributes["gen_ai.system_instructions"])
    assert "the answer" in str(attributes["gen_ai.output.messages"])


async def test_the_span_holds_the_whole_conversation_in_order_when_asked(
    fake: FakeLLM,
    make_provider: MakeProvider,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    fake.script(Reply.answer("four"))
    conversation = (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="two plus two?"),
        ChatMessage(role="assistant", content="four"),
        ChatMessage(role="user", content="and again?"),
    )

    await collect(
        make_provider(trace_content=True).stream(
            CompletionRequest(model="gpt-4o-mini", messages=conversation)
        )
    )

    [span] = spans[1].get_finished_spans()
    attributes = dict(span.attributes or {})
    assert orjson.loads(str(attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "two plus two?"}]},
        {"role": "assistant", "parts": [{"type": "text", "content": "four"}]},
        {"role": "user", "parts": [{"type": "text", "content": "and again?"}]},
    ]
    assert orjson.loads(str(attributes["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "be brief"}
    ]


async def test_a_failed_call_has_an_error_span(
    fake: FakeLLM,
    make_provider: MakeProvider,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    fake.script(Reply.error(429, code="rate_limit_exceeded"))

    await collect(make_provider().stream(ask()))

    [span] = spans[1].get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "rate_limit"
    assert span.attributes["http.response.status_code"] == 429


async def test_the_span_parents_under_the_current_span(
    fake: FakeLLM,
    make_provider: MakeProvider,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider = make_provider()
    with spans[0].get_tracer("test").start_as_current_span("process tasks") as parent:
        await collect(provider.stream(ask()))

    chat = next(s for s in spans[1].get_finished_spans() if s.name.startswith("chat"))
    assert chat.parent is not None
    assert chat.parent.span_id == parent.get_span_context().span_id


async def test_concurrent_streams_each_get_their_own_answer(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.default = Reply(chunk_delay=0.01)  # echo the prompt word by word, interleaved
    provider = make_provider()
    prompts = [f"task {i} says hello" for i in range(40)]

    results = await asyncio.gather(*(collect(provider.stream(ask(p))) for p in prompts))

    assert [got.text for got in results] == prompts
    assert all(got.error is None for got in results)


async def test_a_task_runs_through_the_worker(fake: FakeLLM, make_provider: MakeProvider) -> None:
    fake.script(Reply.answer("Hello", " from", " openai", usage=(4, 3)))
    broker = MemoryBroker()
    registry = ProviderRegistry([EchoProvider(), make_provider()])
    running = await support.start_worker(broker, providers=registry)
    try:
        task = await support.submit(broker, "hi", model="openai/gpt-4o-mini")
        found = await support.collect(broker, 1)
    finally:
        await running.stop()
        await broker.close()

    last = found[task.task_id][-1]
    assert last.kind is EventKind.SUCCEEDED
    assert last.text == "Hello from openai"
    assert last.provider == "openai"
    assert last.model == "gpt-4o-mini"
    assert last.usage == Usage(input_tokens=4, output_tokens=3)
    assert last.finish_reason == "stop"


def test_the_provider_repr_shows_no_key() -> None:
    provider = OpenAIProvider(OpenAISettings(api_key=Secret(KEY)))

    assert KEY not in repr(provider)
    assert "api.openai.com" in repr(provider)


async def test_a_conversation_goes_as_messages_in_order_with_names(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    conversation = (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi", name="ann"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content="and then?"),
    )

    got = await collect(
        make_provider().stream(CompletionRequest(model="gpt-4o-mini", messages=conversation))
    )

    assert got.text == "and then?"  # the fake echoes the last user message
    [sent] = fake.requests
    assert sent.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and then?"},
    ]


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
    ],
)
async def test_a_response_format_is_forwarded_as_is(
    fake: FakeLLM, make_provider: MakeProvider, response_format: Any
) -> None:
    await collect(make_provider().stream(ask(parameters={"response_format": response_format})))

    [sent] = fake.requests
    assert sent.body["response_format"] == response_format


async def test_a_malformed_response_format_is_refused_before_any_call(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    with pytest.raises(InvalidRequest, match="response_format"):
        make_provider().stream(ask(parameters={"response_format": {"type": "yaml"}}))
    assert fake.requests == []
