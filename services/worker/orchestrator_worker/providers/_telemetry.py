"""The span of one provider call, with the OpenTelemetry GenAI semantic conventions.

One CLIENT span per call, named ``chat <model>``, a child of whatever span is current when
the stream is first iterated (the worker's ``process`` span). Attributes follow the GenAI
conventions as of semconv 1.37+ (``gen_ai.provider.name``, which replaced the deprecated
``gen_ai.system``): operation, provider, request model and parameters, server address, and
at the end the response model and id, finish reasons, token usage, or ``error.type``.

Prompts and answers go on the span only with ``TRACE_CONTENT=true`` (as the JSON attributes
``gen_ai.system_instructions``, ``gen_ai.input.messages``, ``gen_ai.output.messages``): they
may be personal data. The span is never made current (the stream yields to the worker in
between), so nothing else parents under it; no exception text or stack is recorded, only
the error's type and its secret-free message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
import yarl
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from orchestrator_tasks.messages import ChatMessage, Usage

from .errors import ProviderError
from .parameters import span_attributes

#: ``gen_ai.provider.name`` values (semconv's ``GenAiProviderNameValues``).
PROVIDER_OPENAI = "openai"
PROVIDER_GEMINI = "gcp.gemini"

_TRACER_NAME = "orchestrator_worker.providers"


def get_tracer(tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
    """The providers' tracer from ``tracer_provider``, else the global one (looked up per
    call by the OpenTelemetry proxy, so a provider built before ``setup_telemetry`` works)."""
    return trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)


class CallSpan:
    """The span of one call: opened at construction, ended by ``end()`` (idempotent)."""

    def __init__(
        self,
        tracer: trace.Tracer,
        *,
        provider: str,
        model: str,
        url: yarl.URL,
        parameters: Mapping[str, Any],
        messages: Sequence[ChatMessage],
        trace_content: bool,
    ) -> None:
        self._span = tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT)
        # Attributes (and the prompt's JSON) only for a span that records. The configurable
        # samplers (the SDK's built-in ones) never read attributes, so setting them after
        # the start gives the same decision and the same span.
        if self._span.is_recording():
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "server.address": url.host or "",
                "server.port": url.port or (443 if url.scheme == "https" else 80),
                **span_attributes(parameters),
            }
            if trace_content:
                # The whole conversation in order; system turns as the system instructions.
                attributes["gen_ai.input.messages"] = _json(
                    [
                        {"role": m.role, "parts": [{"type": "text", "content": m.content}]}
                        for m in messages
                        if m.role != "system"
                    ]
                )
                system = [
                    {"type": "text", "content": m.content} for m in messages if m.role == "system"
                ]
                if system:
                    attributes["gen_ai.system_instructions"] = _json(system)
            self._span.set_attributes(attributes)
        self.trace_content = trace_content
        self._ended = False
        self._outcome = False

    def response(self, *, model: str | None = None, response_id: str | None = None) -> None:
        """What the provider said about itself (first chunk): served model, response id."""
        if model:
            self._span.set_attribute("gen_ai.response.model", model)
        if response_id:
            self._span.set_attribute("gen_ai.response.id", response_id)

    def succeeded(self, usage: Usage | None, finish_reason: str | None, text: str) -> None:
        """The answer is complete: usage, finish reason, and the text when content is on."""
        self._outcome = True
        if finish_reason:
            self._span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))
        if usage is not None:
            self._span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            self._span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if self.trace_content:
            message: dict[str, Any] = {
                "role": "assistant",
                "parts": [{"type": "text", "content": text}],
            }
            if finish_reason:
                message["finish_reason"] = finish_reason
            self._span.set_attribute("gen_ai.output.messages", _json([message]))

    def failed(self, error: ProviderError) -> None:
        """The call failed: ``error.type`` and an ERROR status with the (secret-free) message."""
        self._outcome = True
        self._span.set_attribute("error.type", error.type)
        if error.status is not None:
            self._span.set_attribute("http.response.status_code", error.status)
        self._span.set_status(Status(StatusCode.ERROR, error.message))

    def cancelled(self) -> None:
        """The worker stopped reading before the end (task timeout, shutdown)."""
        if not self._outcome:
            self._span.set_attribute("error.type", "cancelled")

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._span.end()

    @contextlib.contextmanager
    def ending(self) -> Iterator[None]:
        """Around a whole call: a ``ProviderError`` marks the span failed, a cancel or an
        abandoned stream marks it cancelled, and the span ends either way."""
        try:
            yield
        except ProviderError as exc:
            self.failed(exc)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled()
            raise
        finally:
            self.end()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
