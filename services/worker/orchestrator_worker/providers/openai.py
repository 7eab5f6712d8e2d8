"""``openai/<model>``: any OpenAI-compatible Chat Completions API, streamed.

Serves OpenAI itself and the servers that speak its API: Ollama
(``OPENAI_BASE_URL=http://localhost:11434/v1``), vLLM, llama.cpp's server, LM Studio...
``OPENAI_API_KEY`` is optional (local servers need none); it goes as a bearer token.

The call: ``POST {OPENAI_BASE_URL}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``; the conversation goes as ``messages`` unchanged (role,
content, and ``name`` where set), and the task's parameters their Chat Completions names
(see ``parameters``; ``response_format`` goes as is). The
answer arrives as SSE ``data: {chunk}`` events ending with ``data: [DONE]``; usage comes in
the last chunk. A server that answers with a plain JSON completion instead is understood too.

Ending: ``[DONE]``, or the end of the body after a ``finish_reason``; a body that ends before
either is ``StreamInterrupted``. ``finish_reason: content_filter`` (or a refusal with no
answer) is ``ContentFiltered``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import yarl
from opentelemetry import trace

from orchestrator_tasks.messages import Usage

from ._http import (
    HttpClient,
    decode_json,
    error_for_status,
    read_json,
    redact,
    safe_code,
)
from ._sse import sse_events
from ._telemetry import PROVIDER_OPENAI, CallSpan, get_tracer
from .errors import (
    AuthenticationFailed,
    ContentFiltered,
    InvalidRequest,
    MalformedResponse,
    ProviderError,
    RateLimited,
    ServerError,
    StreamInterrupted,
)
from .parameters import openai_body_parameters, validate_parameters
from .protocol import CompletionRequest, Finish, StreamItem
from .settings import OpenAISettings, Secret

__all__ = ["OpenAIProvider"]

_LABEL = "openai"
_DONE = b"[DONE]"


class OpenAIProvider:
    """Streams Chat Completions from ``settings.base_url``; one pooled session."""

    name = "openai"

    def __init__(
        self,
        settings: OpenAISettings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._settings = settings or OpenAISettings()
        self._url = f"{self._settings.base_url.rstrip('/')}/chat/completions"
        self._http = HttpClient(self._settings.http, label=_LABEL)
        self._tracer = get_tracer(tracer_provider)

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self._settings.base_url!r})"

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        # Checked before the generator starts, so bad parameters fail even unconsumed.
        problems = validate_parameters(f"{self.name}/{request.model}", request.parameters)
        if problems:
            raise InvalidRequest("; ".join(f"{field}: {message}" for field, message in problems))
        return self._stream(request, self._body(request))

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        messages = [
            {"role": m.role, "content": m.content}
            if m.name is None
            else {"role": m.role, "content": m.content, "name": m.name}
            for m in request.messages
        ]
        return {
            "model": request.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **openai_body_parameters(request.parameters),
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        key = self._settings.api_key
        if key is not None and key.reveal():
            headers["Authorization"] = f"Bearer {key.reveal()}"
        return headers

    async def _stream(
        self, request: CompletionRequest, body: Mapping[str, Any]
    ) -> AsyncIterator[StreamItem]:
        span = CallSpan(
            self._tracer,
            provider=PROVIDER_OPENAI,
            model=request.model,
            url=yarl.URL(self._url),
            parameters=request.parameters,
            messages=request.messages,
            trace_content=self._settings.http.trace_content,
        )
        answer = _Answer(span, self._settings.api_key)
        with span.ending():
            async with self._http.post(self._url, body=body, headers=self._headers()) as response:
                if response.status != 200:
                    raise await self._status_error(response)
                if response.content_type == "application/json":
                    for text in answer.whole(await read_json(response, label=_LABEL)):
                        yield text
                else:
                    async with contextlib.aclosing(sse_events(response, label=_LABEL)) as events:
                        async for event in events:
                            if event.data.strip() == _DONE:
                                answer.done = True
                                break
                            for text in answer.chunk(decode_json(event.data, label=_LABEL)):
                                yield text
                    if answer.done:
                        self._http.ended(response)
            finish = answer.finish()
            span.succeeded(finish.usage, finish.finish_reason, answer.text)
            yield finish

    async def _status_error(self, response: aiohttp.ClientResponse) -> ProviderError:
        data = await self._http.read_error_body(response)
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        code = safe_code(error.get("code")) or safe_code(error.get("type"))
        return error_for_status(
            _LABEL,
            response.status,
            response.headers,
            code=code,
            secret=self._settings.api_key,
            content_filter=code == "content_filter",
            quota=response.status == 429 and code == "insufficient_quota",
        )

    async def close(self) -> None:
        """Close the session; idempotent."""
        await self._http.close()


class _Answer:
    """What has been read of one streamed answer."""

    def __init__(self, span: CallSpan, secret: Secret | None) -> None:
        self._span = span
        self._secret = secret
        self._parts: list[str] | None = [] if span.trace_content else None
        self._described = False
        self.received_text = False
        self.refused = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.done = False

    @property
    def text(self) -> str:
        return "".join(self._parts or ())

    def chunk(self, data: Any) -> list[str]:
        """The text in one ``chat.completion.chunk`` (usually one piece)."""
        if not isinstance(data, dict):
            raise MalformedResponse(f"{_LABEL}: a stream event is not a JSON object")
        if "error" in data:
            raise _stream_error(data["error"], self._secret)
        self._describe(data)
        texts: list[str] = []
        for choice in _choices(data):
            delta = choice.get("delta")
            if delta is not None and not isinstance(delta, dict):
                raise MalformedResponse(f"{_LABEL}: a chunk's delta is not an object")
            text = (delta or {}).get("content")
            if text is not None and not isinstance(text, str):
                raise MalformedResponse(f"{_LABEL}: a chunk's content is not a string")
            if text:
                texts.append(text)
            if (delta or {}).get("refusal"):
                self.refused = True
            self._finished(choice.get("finish_reason"))
        self._usage(data.get("usage"))
        self._keep(texts)
        return texts

    def whole(self, data: Any) -> list[str]:
        """The text of a non-streamed ``chat.completion``."""
        if not isinstance(data, dict):
            raise MalformedResponse(f"{_LABEL}: the answer is not a JSON object")
        self._describe(data)
        texts: list[str] = []
        for choice in _choices(data):
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            if text is not None and not isinstance(text, str):
                raise MalformedResponse(f"{_LABEL}: the answer's content is not a string")
            if text:
                texts.append(text)
            if isinstance(message, dict) and message.get("refusal"):
                self.refused = True
            self._finished(choice.get("finish_reason") or "stop")
        self._usage(data.get("usage"))
        self.done = True
        self._keep(texts)
        return texts

    def finish(self) -> Finish:
        """The closing item; raises when the stream did not really end or was refused."""
        if not self.done and self.finish_reason is None:
            raise StreamInterrupted(f"{_LABEL}: the stream ended before the answer did")
        if self.finish_reason == "content_filter" or (self.refused and not self.received_text):
            raise ContentFiltered(f"{_LABEL}: the model refused to answer (content filter)")
        return Finish(usage=self.usage, finish_reason=self.finish_reason)

    def _keep(self, texts: list[str]) -> None:
        if texts:
            self.received_text = True
            if self._parts is not None:
                self._parts.extend(texts)

    def _describe(self, data: Mapping[str, Any]) -> None:
        if not self._described:
            self._described = True
            model, response_id = data.get("model"), data.get("id")
            self._span.response(
                model=model if isinstance(model, str) else None,
                response_id=response_id if isinstance(response_id, str) else None,
            )

    def _finished(self, reason: Any) -> None:
        if isinstance(reason, str) and reason:
            self.finish_reason = reason

    def _usage(self, usage: Any) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            raise MalformedResponse(f"{_LABEL}: usage is not an object")
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            self.usage = Usage(input_tokens=prompt, output_tokens=completion)


def _choices(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The first choice (we ask for one), as a list of zero or one."""
    choices = data.get("choices")
    if choices is None:
        return []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise MalformedResponse(f"{_LABEL}: choices is not a list of objects")
    return [c for c in choices if c.get("index", 0) == 0][:1]


def _stream_error(error: Any, secret: Secret | None) -> ProviderError:
    """An ``{"error": ...}`` object sent inside the stream, after the 200."""
    error = error if isinstance(error, dict) else {}
    code = safe_code(error.get("code")) or safe_code(error.get("type"))
    code = redact(code, secret) if code else None
    tag = f" [{code}]" if code else ""
    text = (code or "").lower()
    if "rate_limit" in text:
        return RateLimited(f"{_LABEL}: rate limited mid-stream{tag}", code=code)
    if "content_filter" in text:
        return ContentFiltered(f"{_LABEL}: content filter mid-stream{tag}", code=code)
    if "auth" in text or "api_key" in text:
        return AuthenticationFailed(f"{_LABEL}: authentication failed{tag}", code=code)
    if "invalid_request" in text:
        return InvalidRequest(f"{_LABEL}: the request was refused mid-stream{tag}", code=code)
    return ServerError(f"{_LABEL}: the provider failed mid-stream{tag}", code=code)
