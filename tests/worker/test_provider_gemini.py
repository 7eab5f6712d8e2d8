"""``gemini/<model>``: Google's Generative Language API streamed from the fake, over real HTTP
on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from orchestrator_tasks.messages import ChatMessage, Usage
from orchestrator_worker.providers import (
    AuthenticationFailed,
    CompletionRequest,
    ContentFiltered,
    GeminiProvider,
    GeminiSettings,
    HttpSettings,
    InvalidModel,
    InvalidRequest,
    MalformedResponse,
    Provider,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    Secret,
    ServerError,
    StreamInterrupted,
)
from tests.support.fake_llm import FakeLLM, Reply, collect, free_port

KEY = "AIza-test-0123456789"

MakeProvider = Callable[..., GeminiProvider]


@pytest.fixture
async def make_provider(
    fake: FakeLLM, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> AsyncIterator[MakeProvider]:
    made: list[GeminiProvider] = []

    def make(*, key: str | None = KEY, base_url: str | None = None, **http: Any) -> GeminiProvider:
        settings = GeminiSettings(
            base_url=base_url or fake.gemini_base_url,
            api_key=Secret(key) if key else None,
            http=attrs.evolve(HttpSettings(), **http),
        )
        provider = GeminiProvider(settings, tracer_provider=spans[0])
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


def ask(prompt: str = "hi", *, model: str = "gemini-2.0-flash", **fields: Any) -> CompletionRequest:
    return CompletionRequest.of(model=model, prompt=prompt, **fields)


async def test_a_streamed_answer_arrives_in_chunks_and_exactly(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer("Hel", "lo, ", "wörld ☃", "\n", usage=(11, 4), finish_reason="STOP"))

    got = await collect(make_provider().stream(ask()))

    assert got.error is None
    assert got.chunks == ["Hel", "lo, ", "wörld ☃", "\n"]
    assert got.finish.usage == Usage(input_tokens=11, output_tokens=4)
    assert got.finish.finish_reason == "stop"


async def test_the_provider_satisfies_the_protocol(make_provider: MakeProvider) -> None:
    assert isinstance(make_provider(), Provider)


async def test_the_request_streams_generate_content_with_the_key_in_a_header(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    await collect(make_provider().stream(ask("the prompt", system="be brief")))

    [request] = fake.requests
    assert request.path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    assert request.query == {"alt": "sse"}
    assert request.headers["x-goog-api-key"] == KEY
    assert KEY not in request.url
    assert "key" not in request.query
    assert "Authorization" not in request.headers
    assert request.body == {
        "contents": [{"role": "user", "parts": [{"text": "the prompt"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
    }


async def test_parameters_map_to_generation_config(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    parameters = {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "max_tokens": 64,
        "stop": "END",
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "seed": 42,
        "thinking_budget": 0,
    }
    await collect(make_provider().stream(ask(parameters=parameters)))

    assert fake.requests[0].body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "topK": 40,
        "maxOutputTokens": 64,
        "stopSequences": ["END"],
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "seed": 42,
        "thinkingConfig": {"thinkingBudget": 0},
    }
    assert "systemInstruction" not in fake.requests[0].body


@pytest.mark.parametrize(
    "parameters",
    [{"reasoning_effort": "low"}, {"latency_ms": 5}, {"seed": 2**40}, {"stop": ["a"] * 6}],
)
async def test_unsupported_parameters_fail_before_any_request(
    fake: FakeLLM, make_provider: MakeProvider, parameters: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequest):
        make_provider().stream(ask(parameters=parameters))

    assert fake.count == 0


async def test_tuned_model_names_keep_their_collection(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    await collect(make_provider().stream(ask(model="tunedModels/my-model-1")))

    assert fake.requests[0].path == "/v1beta/tunedModels/my-model-1:streamGenerateContent"


@pytest.mark.parametrize("model", ["../admin", "models/x/../../y", "a b", "", "x?key=1"])
async def test_odd_model_names_are_refused_before_any_request(
    fake: FakeLLM, make_provider: MakeProvider, model: str
) -> None:
    with pytest.raises(InvalidModel):
        make_provider().stream(ask(model=model))

    assert fake.count == 0


async def test_without_a_key_a_task_fails_as_authentication_before_any_request(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    with pytest.raises(AuthenticationFailed) as raised:
        make_provider(key=None).stream(ask())

    assert "GEMINI_API_KEY" in raised.value.message
    assert fake.count == 0


async def test_a_key_google_rejects_is_an_authentication_failure(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.require_key(gemini="AIza-the-right-one")

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, AuthenticationFailed)
    assert got.error.status == 400
    assert KEY not in got.error.message


async def test_thought_parts_are_not_part_of_the_answer(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    thinking = {
        "candidates": [
            {"index": 0, "content": {"parts": [{"text": "hmm...", "thought": True}, {"text": "4"}]}}
        ]
    }
    done = {
        "candidates": [{"index": 0, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 3,
            "candidatesTokenCount": 1,
            "thoughtsTokenCount": 20,
        },
    }
    fake.script(
        Reply.malformed(b"data: " + _json(thinking) + b"\r\n\r\ndata: " + _json(done) + b"\r\n\r\n")
    )

    got = await collect(make_provider().stream(ask("2+2?")))

    assert got.chunks == ["4"]
    assert got.finish.usage == Usage(input_tokens=3, output_tokens=21)


async def test_a_plain_json_answer_is_understood(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer("all ", "at once", as_json=True, usage=(7, 2)))

    got = await collect(make_provider().stream(ask()))

    assert got.text == "all at once"
    assert got.finish.usage == Usage(input_tokens=7, output_tokens=2)


async def test_max_tokens_finish_reads_as_length(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.answer("trunc", finish_reason="MAX_TOKENS"))

    got = await collect(make_provider().stream(ask()))

    assert got.finish.finish_reason == "length"


async def test_a_blocked_prompt_is_a_refusal(fake: FakeLLM, make_provider: MakeProvider) -> None:
    fake.script(Reply(block_reason="SAFETY"))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, ContentFiltered)
    assert got.error.code == "SAFETY"
    assert not got.error.retryable


@pytest.mark.parametrize("reason", ["SAFETY", "RECITATION", "PROHIBITED_CONTENT"])
async def test_a_blocked_answer_is_a_refusal(
    fake: FakeLLM, make_provider: MakeProvider, reason: str
) -> None:
    fake.script(Reply.answer("Sure, here", finish_reason=reason))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, ContentFiltered)


@pytest.mark.parametrize(
    ("status", "rpc_status", "error", "retryable"),
    [
        (400, "INVALID_ARGUMENT", InvalidRequest, False),
        (400, "FAILED_PRECONDITION", InvalidRequest, False),
        (403, "PERMISSION_DENIED", AuthenticationFailed, False),
        (404, "NOT_FOUND", InvalidModel, False),
        (429, "RESOURCE_EXHAUSTED", RateLimited, True),
        (500, "INTERNAL", ServerError, True),
        (503, "UNAVAILABLE", ServerError, True),
        (504, "DEADLINE_EXCEEDED", ProviderTimeout, True),
    ],
)
async def test_http_errors_are_classified(
    fake: FakeLLM,
    make_provider: MakeProvider,
    status: int,
    rpc_status: str,
    error: type[ProviderError],
    retryable: bool,
) -> None:
    fake.script(Reply.error(status, code=rpc_status, message=f"secret detail {KEY}"))

    got = await collect(make_provider().stream(ask()))

    assert type(got.error) is error
    assert got.error.retryable is retryable
    assert got.error.status == status
    assert got.error.code == rpc_status
    assert "secret detail" not in got.error.message


async def test_a_rate_limit_reads_the_retry_delay_from_the_error_details(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "35s"}
    fake.script(Reply.error(429, code="RESOURCE_EXHAUSTED", details=[retry_info]))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, RateLimited)
    assert got.error.retry_after == 35.0


async def test_a_rate_limit_reads_retry_after_headers_too(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.error(429, code="RESOURCE_EXHAUSTED", headers={"Retry-After": "4"}))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, RateLimited)
    assert got.error.retry_after == 4.0


async def test_a_stream_cut_mid_answer_is_retryable_after_the_first_chunks(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.cut("partial ", "answer"))

    got = await collect(make_provider().stream(ask()))

    assert got.chunks == ["partial ", "answer"]
    assert isinstance(got.error, StreamInterrupted)
    assert got.error.retryable


async def test_a_stream_ending_without_a_finish_reason_is_interrupted(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.unfinished("half"))

    got = await collect(make_provider().stream(ask()))

    assert got.chunks == ["half"]
    assert isinstance(got.error, StreamInterrupted)


@pytest.mark.parametrize(
    "raw",
    [
        b"data: {not json\r\n\r\n",
        b'data: {"candidates": {"0": 1}}\r\n\r\n',
        b'data: {"candidates": [{"content": {"parts": [{"text": 7}]}}]}\r\n\r\n',
        b'data: {"usageMetadata": []}\r\n\r\n',
    ],
)
async def test_malformed_events_are_malformed_responses(
    fake: FakeLLM, make_provider: MakeProvider, raw: bytes
) -> None:
    fake.script(Reply.malformed(raw))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, MalformedResponse)


async def test_an_error_inside_the_stream_is_classified(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    error = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
    fake.script(Reply.malformed(b"data: " + _json(error) + b"\r\n\r\n"))

    got = await collect(make_provider().stream(ask()))

    assert isinstance(got.error, ServerError)
    assert got.error.code == "UNAVAILABLE"


async def test_silence_past_the_read_timeout_is_a_timeout(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    fake.script(Reply.stalled(30, "first ", "second", after=1))

    got = await collect(make_provider(read_timeout=1.0).stream(ask()))

    assert got.chunks == ["first "]
    assert isinstance(got.error, ProviderTimeout)


async def test_a_refused_connection_is_unavailable(make_provider: MakeProvider) -> None:
    provider = make_provider(base_url=f"http://127.0.0.1:{free_port()}/v1beta")

    got = await collect(provider.stream(ask()))

    assert isinstance(got.error, ProviderUnavailable)


async def test_calls_share_one_session_and_reuse_its_connection(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    provider = make_provider()

    for _ in range(3):
        got = await collect(provider.stream(ask()))
        assert got.error is None

    assert len({request.peer for request in fake.requests}) == 1


async def test_each_call_is_a_client_span_with_genai_attributes(
    fake: FakeLLM,
    make_provider: MakeProvider,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    fake.script(Reply.answer("a", "b", usage=(9, 2), model="gemini-2.0-flash-001"))

    await collect(make_provider().stream(ask(parameters={"temperature": 0.1, "top_k": 5})))

    [span] = spans[1].get_finished_spans()
    assert span.name == "chat gemini-2.0-flash"
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.provider.name"] == "gcp.gemini"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gemini-2.0-flash"
    assert attributes["gen_ai.response.model"] == "gemini-2.0-flash-001"
    assert attributes["gen_ai.usage.input_tokens"] == 9
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.request.temperature"] == 0.1
    assert attributes["gen_ai.request.top_k"] == 5


def test_the_provider_repr_shows_no_key() -> None:
    provider = GeminiProvider(GeminiSettings(api_key=Secret(KEY)))

    assert KEY not in repr(provider)


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


CONVERSATION = (
    ChatMessage(role="system", content="be brief"),
    ChatMessage(role="user", content="hi", name="ann"),
    ChatMessage(role="assistant", content="hello"),
    ChatMessage(role="system", content="answer in French"),
    ChatMessage(role="user", content="and then?"),
)


async def test_a_conversation_goes_as_contents_with_roles_mapped_and_system_instruction(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    request = CompletionRequest(model="gemini-2.0-flash", messages=CONVERSATION)

    got = await collect(make_provider().stream(request))

    assert got.error is None
    [sent] = fake.requests
    assert sent.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "and then?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}, {"text": "answer in French"}]},
    }


async def test_a_conversation_of_system_messages_only_is_refused_before_any_call(
    fake: FakeLLM, make_provider: MakeProvider
) -> None:
    request = CompletionRequest(
        model="gemini-2.0-flash", messages=(ChatMessage(role="system", content="s"),)
    )

    with pytest.raises(InvalidRequest, match="no user or assistant turn"):
        make_provider().stream(request)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("response_format", "config"),
    [
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    "strict": True,
                },
            },
            {
                "responseMimeType": "application/json",
                "responseSchema": {"type": "object", "properties": {"a": {"type": "string"}}},
            },
        ),
        ({"type": "text"}, None),
    ],
)
async def test_a_response_format_maps_to_the_response_mime_type_and_schema(
    fake: FakeLLM, make_provider: MakeProvider, response_format: Any, config: Any
) -> None:
    parameters = {"response_format": response_format, "temperature": 0.5}

    await collect(make_provider().stream(ask(parameters=parameters)))

    [sent] = fake.requests
    assert sent.body["generationConfig"] == {"temperature": 0.5, **(config or {})}
