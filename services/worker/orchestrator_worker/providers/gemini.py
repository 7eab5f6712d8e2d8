"""``gemini/<model>``: Google's Generative Language API (Gemini), streamed.

The call: ``POST {GEMINI_BASE_URL}/models/{model}:streamGenerateContent?alt=sse`` with the
key in the ``x-goog-api-key`` header (never in the URL, where proxies and logs keep it). The
conversation's user and assistant turns are ``contents`` in order (roles ``user`` and
``model``; Gemini has no ``name``), its system messages the parts of ``systemInstruction``,
the task's parameters ``generationConfig`` fields (see ``parameters``; ``response_format``
becomes ``responseMimeType`` and ``responseSchema``). Each SSE event is a
``GenerateContentResponse``; text is in ``candidates[0].content.parts[].text`` (parts marked
``thought`` are the model's thinking, not the answer), usage in ``usageMetadata`` (output
counts ``candidatesTokenCount`` plus ``thoughtsTokenCount``, as billed). A plain JSON answer
(one response, or the array ``streamGenerateContent`` sends without ``alt=sse``) is understood
too.

Ending: the body ends after a candidate carried a ``finishReason`` (``STOP`` -> ``stop``,
``MAX_TOKENS`` -> ``length``, others lower-cased); a body that ends before that is
``StreamInterrupted``. Safety blocks (``promptFeedback.blockReason``, or a ``finishReason``
of ``SAFETY``, ``RECITATION``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ``SPII``,
``IMAGE_SAFETY``) are ``ContentFiltered``. A key Google rejects (HTTP 400
``API_KEY_INVALID``) is ``AuthenticationFailed``; ``RetryInfo.retryDelay`` fills
``retry_after`` on a 429.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import yarl
from opentelemetry import trace

from orchestrator_tasks.messages import Usage

from ._http import HttpClient, decode_json, error_for_status, read_json, redact, safe_code
from ._sse import sse_events
from ._telemetry import PROVIDER_GEMINI, CallSpan, get_tracer
from .errors import (
    AuthenticationFailed,
    ContentFiltered,
    InvalidModel,
    InvalidRequest,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
    StreamInterrupted,
    parse_duration,
)
from .parameters import gemini_generation_config, validate_parameters
from .protocol import CompletionRequest, Finish, StreamItem
from .settings import GeminiSettings, Secret

__all__ = ["GeminiProvider"]

_LABEL = "gemini"
#: A model name, optionally with its collection (``models/`` or ``tunedModels/``).
_MODEL = re.compile(r"^(?:(?:models|tunedModels)/)?[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_BLOCKED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
#: google.rpc status names that mean the same as an HTTP status, for errors in a stream.
_RPC_STATUS = {
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
    "DEADLINE_EXCEEDED": 504,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}


#: Gemini's name for each non-system role.
_ROLES = {"user": "user", "assistant": "model"}


def _contents(request: CompletionRequest) -> list[dict[str, Any]]:
    """The user and assistant turns as Gemini ``contents``, in order."""
    return [
        {"role": _ROLES[m.role], "parts": [{"text": m.content}]}
        for m in request.messages
        if m.role != "system"
    ]


class GeminiProvider:
    """Streams ``streamGenerateContent`` from ``settings.base_url``; one pooled session."""

    name = "gemini"

    def __init__(
        self,
        settings: GeminiSettings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._settings = settings or GeminiSettings()
        self._base = self._settings.base_url.rstrip("/")
        self._http = HttpClient(self._settings.http, label=_LABEL)
        self._tracer = get_tracer(tracer_provider)

    def __repr__(self) -> str:
        return f"GeminiProvider(base_url={self._settings.base_url!r})"

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        # Checked before the generator starts, so a bad task fails even unconsumed.
        problems = validate_parameters(f"{self.name}/{request.model}", request.parameters)
        if problems:
            raise InvalidRequest("; ".join(f"{field}: {message}" for field, message in problems))
        if not any(m.role != "system" for m in request.messages):
            raise InvalidRequest(f"{_LABEL}: the conversation has no user or assistant turn")
        if not _MODEL.match(request.model):
            raise InvalidModel(f"{_LABEL}: {request.model[:100]!r} is not a Gemini model name")
        key = self._settings.api_key
        if key is None or not key.reveal():
            raise AuthenticationFailed(f"{_LABEL}: GEMINI_API_KEY is not set on the worker")
        return self._stream(request, key)

    def url(self, model: str) -> str:
        """The streaming endpoint for ``model`` (no key in it)."""
        path = model if "/" in model else f"models/{model}"
        return f"{self._base}/{path}:streamGenerateContent?alt=sse"

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": _contents(request)}
        system = request.system_messages
        if system:
            body["systemInstruction"] = {"parts": [{"text": text} for text in system]}
        config = gemini_generation_config(request.parameters)
        if config:
            body["generationConfig"] = config
        return body

    async def _stream(self, request: CompletionRequest, key: Secret) -> AsyncIterator[StreamItem]:
        url = self.url(request.model)
        span = CallSpan(
            self._tracer,
            provider=PROVIDER_GEMINI,
            model=request.model,
            url=yarl.URL(url),
            parameters=request.parameters,
            messages=request.messages,
            trace_content=self._settings.http.trace_content,
        )
        answer = _Answer(span, key)
        headers = {"Accept": "text/event-stream", "x-goog-api-key": key.reveal()}
        with span.ending():
            async with self._http.post(url, body=self._body(request), headers=headers) as response:
                if response.status != 200:
                    raise await self._status_error(response)
                if response.content_type == "application/json":
                    data = await read_json(response, label=_LABEL)
                    for item in data if isinstance(data, list) else [data]:
                        for text in answer.chunk(item):
                            yield text
                else:
                    async with contextlib.aclosing(sse_events(response, label=_LABEL)) as events:
                        async for event in events:
                            for text in answer.chunk(decode_json(event.data, label=_LABEL)):
                                yield text
            finish = answer.finish()
            span.succeeded(finish.usage, finish.finish_reason, answer.text)
            yield finish

    async def _status_error(self, response: aiohttp.ClientResponse) -> ProviderError:
        data = await self._http.read_error_body(response)
        if isinstance(data, list) and data:
            data = data[0]  # streamGenerateContent without alt=sse wraps errors in a list
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        code = safe_code(error.get("status"))
        reasons, retry_delay = _details(error.get("details"))
        return error_for_status(
            _LABEL,
            response.status,
            response.headers,
            code=code,
            secret=self._settings.api_key,
            retry_after=retry_delay,
            authentication="API_KEY_INVALID" in reasons or code == "UNAUTHENTICATED",
        )

    async def close(self) -> None:
        """Close the session; idempotent."""
        await self._http.close()


def _details(details: Any) -> tuple[set[str], float | None]:
    """The ``ErrorInfo`` reasons and the ``RetryInfo`` delay in a google.rpc error."""
    reasons: set[str] = set()
    delay: float | None = None
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        reason = detail.get("reason")
        if isinstance(reason, str):
            reasons.add(reason)
        retry = detail.get("retryDelay")
        if isinstance(retry, str):
            delay = parse_duration(retry)
    return reasons, delay


class _Answer:
    """What has been read of one streamed answer."""

    def __init__(self, span: CallSpan, secret: Secret) -> None:
        self._span = span
        self._secret = secret
        self._parts: list[str] | None = [] if span.trace_content else None
        self._described = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts or ())

    def chunk(self, data: Any) -> list[str]:
        """The answer text in one ``GenerateContentResponse``."""
        if not isinstance(data, dict):
            raise MalformedResponse(f"{_LABEL}: a stream event is not a JSON object")
        if "error" in data:
            raise _stream_error(data["error"], self._secret)
        self._describe(data)
        feedback = data.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            reason = safe_code(feedback.get("blockReason"))
            raise ContentFiltered(
                f"{_LABEL}: the prompt was blocked" + (f" [{reason}]" if reason else ""),
                code=reason,
            )
        self._usage(data.get("usageMetadata"))
        candidates = data.get("candidates")
        if candidates is None:
            return []
        if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
            raise MalformedResponse(f"{_LABEL}: candidates is not a list of objects")
        texts: list[str] = []
        for candidate in [c for c in candidates if c.get("index", 0) == 0][:1]:
            texts.extend(_texts(candidate.get("content")))
            self._finished(candidate.get("finishReason"))
        if texts and self._parts is not None:
            self._parts.extend(texts)
        return texts

    def finish(self) -> Finish:
        """The closing item; raises when the stream ended before a finish reason."""
        if self.finish_reason is None:
            raise StreamInterrupted(f"{_LABEL}: the stream ended before the answer did")
        return Finish(usage=self.usage, finish_reason=self.finish_reason)

    def _describe(self, data: Mapping[str, Any]) -> None:
        if not self._described:
            self._described = True
            model, response_id = data.get("modelVersion"), data.get("responseId")
            self._span.response(
                model=model if isinstance(model, str) else None,
                response_id=response_id if isinstance(response_id, str) else None,
            )

    def _finished(self, reason: Any) -> None:
        if not isinstance(reason, str) or not reason or reason == "FINISH_REASON_UNSPECIFIED":
            return
        if reason in _BLOCKED:
            raise ContentFiltered(
                f"{_LABEL}: the answer was blocked [{safe_code(reason)}]", code=reason
            )
        self.finish_reason = _FINISH.get(reason, reason.lower())

    def _usage(self, usage: Any) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            raise MalformedResponse(f"{_LABEL}: usageMetadata is not an object")
        prompt = usage.get("promptTokenCount", 0)
        output = usage.get("candidatesTokenCount", 0)
        thoughts = usage.get("thoughtsTokenCount", 0)
        if all(isinstance(n, int) for n in (prompt, output, thoughts)):
            self.usage = Usage(input_tokens=prompt, output_tokens=output + thoughts)


def _texts(content: Any) -> list[str]:
    if content is None:
        return []
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is None:
        return []
    if not isinstance(parts, list):
        raise MalformedResponse(f"{_LABEL}: content.parts is not a list")
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            raise MalformedResponse(f"{_LABEL}: a content part is not an object")
        text = part.get("text")
        if text is not None and not isinstance(text, str):
            raise MalformedResponse(f"{_LABEL}: a part's text is not a string")
        if text and not part.get("thought"):
            texts.append(text)
    return texts


def _stream_error(error: Any, secret: Secret) -> ProviderError:
    """An ``{"error": ...}`` object sent inside the stream, after the 200."""
    error = error if isinstance(error, dict) else {}
    code = safe_code(error.get("status"))
    code = redact(code, secret) if code else None
    tag = f" [{code}]" if code else ""
    status = _RPC_STATUS.get(code or "", 500)
    if status == 429:
        _, delay = _details(error.get("details"))
        return RateLimited(f"{_LABEL}: rate limited mid-stream{tag}", retry_after=delay, code=code)
    if status in (401, 403):
        return AuthenticationFailed(f"{_LABEL}: authentication failed{tag}", code=code)
    if status in (400, 404):
        return InvalidRequest(f"{_LABEL}: the request was refused mid-stream{tag}", code=code)
    if status == 504:
        return ProviderTimeout(f"{_LABEL}: the provider timed out mid-stream{tag}", code=code)
    return ServerError(f"{_LABEL}: the provider failed mid-stream{tag}", code=code)
