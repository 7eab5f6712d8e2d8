"""``echo``: an offline, deterministic provider that answers with the prompt itself.

For demos, tests, capacity tests and benchmarks: it needs no network and no key. The answer
is the conversation's last user message exactly (the prompt, for a one-prompt task), streamed
in chunks cut at word boundaries (each word keeps the whitespace that follows it, so the
chunks join back to the message byte for byte): one word per chunk when ``chunk_delay_ms`` is
set, otherwise runs of words up to ~200 characters, since chunks that arrive together are
coalesced anyway and each one costs a little CPU.

Task parameters it understands:

- ``latency_ms`` (number, default 0): wait this long *before the first chunk*, like a model's
  time to first token; the chunks then follow at once. 2,000 tasks with ``latency_ms=500``
  at concurrency 1,000 therefore take about 1 s.
- ``chunk_delay_ms`` (number, default 0): pause between chunks (then one word each), to
  watch an answer stream in.
- ``fail`` (string): fail after the latency with this error type (``rate_limit``,
  ``timeout``, ``server_error``, ``unavailable``, ``invalid_request``, ``authentication``,
  ``content_filter``), to exercise error paths end to end. Retryable ones carry a 1 s
  ``Retry-After`` which, as from a real provider, pauses echo for that second for every
  task of the worker process (see ``breaker``).

- ``response_format`` ``{"type": "json_object"}``: the answer is that text as JSON,
  ``{"text": "..."}`` (streamed in the same chunks). ``json_schema`` is refused
  (``invalid_request``): echo cannot follow an arbitrary schema.

Usage is approximate: tokens are counted as whitespace-separated words (input: every
message; output: the answer).

Like the real providers, each call is a ``chat echo`` CLIENT span (GenAI conventions:
``gen_ai.provider.name`` ``echo``, request model, usage, finish reason or ``error.type``), a
child of the worker's ``process`` span, so a trace looks the same whatever the model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from orchestrator_tasks.messages import Usage
from orchestrator_tasks.parameters import MAX_ECHO_DELAY_MS

from .errors import (
    AuthenticationFailed,
    ContentFiltered,
    InvalidRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ServerError,
)
from .protocol import CompletionRequest, Finish, StreamItem

#: A chunk: leading whitespace on its own, then each word with the whitespace after it.
_CHUNK = re.compile(r"\S+\s*|\s+")

#: Longest run of words sent as one chunk when there is no pause between chunks.
_GROUP_CHARS = 200

#: Longest simulated delay (the vocabulary's: a minute), so echo cannot hold a slot for free.
_MAX_DELAY_MS = MAX_ECHO_DELAY_MS

_FAILURES: dict[str, type[ProviderError]] = {
    cls.type: cls
    for cls in (
        RateLimited,
        ProviderTimeout,
        ServerError,
        ProviderUnavailable,
        InvalidRequest,
        AuthenticationFailed,
        ContentFiltered,
    )
}


def count_words(text: str | None) -> int:
    """The approximate token count used by ``echo``: whitespace-separated words."""
    return len(text.split()) if text else 0


class EchoProvider:
    """Answers every prompt with itself; see the module docstring for its parameters.

    ``tracer_provider`` defaults to the global one (looked up when used).
    """

    name = "echo"

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        # Validate before the generator starts, so bad parameters fail even unconsumed.
        latency = _delay(request.parameters, "latency_ms")
        chunk_delay = _delay(request.parameters, "chunk_delay_ms")
        failure = _failure(request.parameters)
        answer = _answer(request)
        return self._stream(request, answer, latency, chunk_delay, failure)

    async def _stream(
        self,
        request: CompletionRequest,
        answer: str,
        latency: float,
        chunk_delay: float,
        failure: type[ProviderError] | None,
    ) -> AsyncIterator[StreamItem]:
        span = self._tracer.start_span("chat echo", kind=SpanKind.CLIENT)
        # Attributes only if the span records: the configurable samplers (the SDK's built-in
        # ones) never read them, so setting them after the start is equivalent.
        if span.is_recording():
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "echo",
                    "gen_ai.request.model": request.model,
                }
            )
        try:
            if latency:
                await asyncio.sleep(latency)
            if failure is not None:
                raise failure(f"echo was asked to fail with {failure.type}", retry_after=1.0)
            if chunk_delay:
                first = True
                for match in _CHUNK.finditer(answer):
                    if not first:
                        await asyncio.sleep(chunk_delay)
                    first = False
                    yield match.group()
            else:
                for chunk in _grouped(answer):
                    yield chunk
            usage = Usage(
                input_tokens=sum(count_words(m.content) for m in request.messages),
                output_tokens=count_words(answer),
            )
            if span.is_recording():
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
                span.set_attribute("gen_ai.response.finish_reasons", ("stop",))
            yield Finish(usage=usage, finish_reason="stop")
        except ProviderError as exc:
            span.set_attribute("error.type", exc.type)
            span.set_status(Status(StatusCode.ERROR, exc.message))
            raise
        finally:
            span.end()

    async def close(self) -> None:
        """Nothing to release."""


def _grouped(text: str) -> list[str]:
    """``text`` in runs of whole words of up to ``_GROUP_CHARS`` (a longer word alone)."""
    if len(text) <= _GROUP_CHARS:
        return [text] if text else []
    chunks: list[str] = []
    start = end = 0
    for match in _CHUNK.finditer(text):
        if match.end() - start > _GROUP_CHARS and end > start:
            chunks.append(text[start:end])
            start = end
        end = match.end()
    chunks.append(text[start:end])
    return chunks


def _answer(request: CompletionRequest) -> str:
    """The last user message, as JSON ``{"text": ...}`` when ``response_format`` asks."""
    text = request.last_user_message
    response_format = request.parameters.get("response_format")
    if response_format is None:
        return text
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return orjson.dumps({"text": text}).decode()
    if kind == "text":
        return text
    if kind == "json_schema":
        raise InvalidRequest(
            'parameters.response_format: echo cannot follow a JSON schema (use "json_object")'
        )
    raise InvalidRequest("parameters.response_format must be a text or json_object format")


def _delay(parameters: Mapping[str, Any], name: str) -> float:
    value = parameters.get(name, 0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"parameters.{name} must be a number of milliseconds")
    if not 0 <= value <= _MAX_DELAY_MS:
        raise InvalidRequest(f"parameters.{name} must be between 0 and {_MAX_DELAY_MS}")
    return float(value) / 1000.0


def _failure(parameters: Mapping[str, Any]) -> type[ProviderError] | None:
    value = parameters.get("fail")
    if value is None:
        return None
    if not isinstance(value, str) or value not in _FAILURES:
        raise InvalidRequest(f"parameters.fail must be one of {', '.join(sorted(_FAILURES))}")
    return _FAILURES[value]
