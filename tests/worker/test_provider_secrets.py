"""No secret leaves the process: a canary API key, every error path of both providers, and
the key must appear in no log line, span, exception, event or repr.

The fake server is hostile on purpose: it quotes the key it received in its error texts (as
OpenAI's 401 does), uses it as an error code, sends it back in a header, and puts it into
malformed bodies.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable

import attrs
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_broker import MemoryBroker
from orchestrator_tasks.messages import EventKind
from orchestrator_worker.providers import (
    CompletionRequest,
    GeminiProvider,
    GeminiSettings,
    HttpSettings,
    OpenAIProvider,
    OpenAISettings,
    ProviderRegistry,
    ProviderSettings,
    Secret,
)
from tests.support.fake_llm import FakeLLM, Reply, collect, free_port
from tests.worker import support

OPENAI_CANARY = f"sk-canary-{uuid.uuid4().hex}"
GEMINI_CANARY = f"AIza-canary-{uuid.uuid4().hex}"
CANARIES = (OPENAI_CANARY, GEMINI_CANARY)
#: A fragment too: a leak of part of the key (as "sk-abc***xyz" masking does) counts.
FRAGMENTS = (*CANARIES, OPENAI_CANARY[-16:], GEMINI_CANARY[-16:])

Scenario = Callable[[FakeLLM, str], Reply | None]


def _hostile_error(status: int) -> Scenario:
    def scenario(fake: FakeLLM, key: str) -> Reply:
        return Reply.error(
            status,
            code=key,
            message=f"bad key {key}",
            headers={"Retry-After": "1", "x-echo-key": key},
        )

    return scenario


def _wrong_key(fake: FakeLLM, key: str) -> None:
    fake.require_key(openai="sk-the-right-one", gemini="AIza-the-right-one")


SCENARIOS: dict[str, Scenario] = {
    "401 quoting the key": _wrong_key,
    "401 key as code": _hostile_error(401),
    "429": _hostile_error(429),
    "500": _hostile_error(500),
    "timeout": lambda fake, key: Reply.stalled(30, "a", after=1, headers={"x-echo-key": key}),
    "cut stream": lambda fake, key: Reply.cut("a", headers={"x-echo-key": key}),
    "malformed": lambda fake, key: Reply.malformed(b"data: {" + key.encode() + b"\n\n"),
    "in-stream error": lambda fake, key: Reply(
        extra_event={"error": {"message": key, "code": key, "status": key, "type": key}}
    ),
    "success": lambda fake, key: Reply.answer("fine", headers={"x-echo-key": key}),
}


def _providers(
    base_url: str | None, fake: FakeLLM, tracer_provider: TracerProvider
) -> list[OpenAIProvider | GeminiProvider]:
    # TRACE_CONTENT on: the most that can go on a span.
    http = HttpSettings(read_timeout=1.0, trace_content=True)
    return [
        OpenAIProvider(
            OpenAISettings(
                base_url=base_url or fake.openai_base_url, api_key=Secret(OPENAI_CANARY), http=http
            ),
            tracer_provider=tracer_provider,
        ),
        GeminiProvider(
            GeminiSettings(
                base_url=base_url or fake.gemini_base_url, api_key=Secret(GEMINI_CANARY), http=http
            ),
            tracer_provider=tracer_provider,
        ),
    ]


def assert_no_canary(where: str, text: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, f"a key leaked into {where}"


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


def spans_text(exporter: InMemorySpanExporter) -> str:
    return "\n".join(span.to_json() for span in exporter.get_finished_spans())


def error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    return "\n".join(
        [
            str(error),
            repr(error),
            repr(vars(error)),
            *traceback.format_exception(error),  # the chained causes too
        ]
    )


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_no_error_path_leaks_the_key(
    fake: FakeLLM,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
    scenario: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    providers = _providers(None, fake, spans[0])
    errors = []
    try:
        for provider, key in zip(providers, CANARIES, strict=True):
            reply = SCENARIOS[scenario](fake, key)
            if reply is not None:
                fake.script(reply)
            got = await collect(
                provider.stream(CompletionRequest.of(model="m-1", prompt="p", system="s"))
            )
            if scenario != "success":
                assert got.error is not None, f"{scenario} should fail"
            errors.append(got.error)
    finally:
        for provider in providers:
            await provider.close()

    assert len(fake.requests) == 2
    assert fake.requests[0].headers["Authorization"] == f"Bearer {OPENAI_CANARY}"  # it was sent
    assert fake.requests[1].headers["x-goog-api-key"] == GEMINI_CANARY
    assert_no_canary("logs", log_text(caplog))
    assert_no_canary("spans", spans_text(spans[1]))
    for error in errors:
        assert_no_canary("an exception", error_text(error))
    for provider in providers:
        assert_no_canary("a repr", repr(provider))


async def test_an_unreachable_provider_leaks_no_key(
    fake: FakeLLM,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    providers = _providers(f"http://127.0.0.1:{free_port()}/v1", fake, spans[0])
    for provider in providers:
        got = await collect(provider.stream(CompletionRequest.of(model="m", prompt="p")))
        assert got.error is not None
        assert_no_canary("an exception", error_text(got.error))
        await provider.close()

    assert_no_canary("logs", log_text(caplog))
    assert_no_canary("spans", spans_text(spans[1]))


def test_settings_never_show_the_keys() -> None:
    settings = ProviderSettings.from_env(
        {"OPENAI_API_KEY": OPENAI_CANARY, "GEMINI_API_KEY": GEMINI_CANARY}
    )

    for shown in (
        repr(settings),
        str(settings),
        repr(settings.openai),
        repr(settings.gemini),
        str(attrs.asdict(settings, recurse=True)),
        f"{settings.openai.api_key}",
    ):
        assert_no_canary("a settings repr", shown)


async def test_failed_tasks_carry_no_key_in_their_events(
    fake: FakeLLM,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = MemoryBroker()
    # Not retryable, so each task ends at its first attempt whatever the runner's retries.
    _wrong_key(fake, "")
    registry = ProviderRegistry(_providers(None, fake, spans[0]))
    running = await support.start_worker(broker, providers=registry)
    try:
        for model in ("openai/gpt-4o-mini", "gemini/gemini-2.0-flash"):
            await support.submit(broker, "a prompt", model=model)
        found = await support.collect(broker, 2)
    finally:
        await running.stop()
        await registry.close()
        await broker.close()

    events = [event for task_events in found.values() for event in task_events]
    failed = [event for event in events if event.kind is EventKind.FAILED]
    assert len(failed) == 2
    assert {event.error.type for event in failed if event.error} == {"authentication"}
    for event in events:
        assert_no_canary("a result event", repr(event))
    assert_no_canary("logs", log_text(caplog))
    assert_no_canary("spans", spans_text(spans[1]))
