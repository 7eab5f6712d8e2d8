"""A fake LLM API on loopback: OpenAI-style and Gemini-style streams, scripted per test.

One aiohttp server answers both APIs (real HTTP, so the providers' real client code runs)::

    async with FakeLLM() as fake:
        provider = OpenAIProvider(OpenAISettings(base_url=fake.openai_base_url))
        fake.script(Reply.answer("Hel", "lo"), Reply.error(429, headers={"Retry-After": "3"}))
        ...
        assert fake.requests[0].body["temperature"] == 0.2

Routes: ``POST .../chat/completions`` is OpenAI (base URL ``fake.openai_base_url``, ``/v1``);
``POST .../models/<model>:streamGenerateContent`` (or ``:generateContent``) is Gemini (base
URL ``fake.gemini_base_url``, ``/v1beta``). Each request takes the next scripted ``Reply``;
when the script is empty, ``fake.default`` answers (by default: the prompt echoed back word
by word). ``fake.respond_with(fn)`` computes replies from the request instead.

A ``Reply`` says what to send: answer chunks, finish reason and usage; or an HTTP error with
headers (``Retry-After``...) and a provider-style error body; plus faults: a delay before the
headers, pauses between chunks, a stall (for read timeouts), a connection cut after N chunks,
a stream that ends without its finish, raw bytes (malformed SSE/JSON). Every request is logged
in ``fake.requests`` (headers, query, parsed JSON body, the client's address) for asserts.

``fake.require_key(...)`` makes the fake check keys like the real APIs: a wrong OpenAI key
gets 401 ``invalid_api_key`` whose *message quotes the key it received* (as OpenAI's does),
a wrong Gemini key 400 ``API_KEY_INVALID``: the providers must not pass that text on.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import orjson
from aiohttp import web

__all__ = ["Collected", "FakeLLM", "RecordedRequest", "Reply", "collect", "free_port"]

_ids = itertools.count(1)


@attrs.define
class Collected:
    """What a provider stream produced: the text chunks, the ``Finish``, or the error."""

    chunks: list[str] = attrs.field(factory=list)
    finish: Any = None
    error: BaseException | None = None

    @property
    def text(self) -> str:
        return "".join(self.chunks)


async def collect(stream: Any, *, timeout: float = 30.0) -> Collected:
    """Read a provider stream to its end (hang guard: ``timeout``), keeping what came
    before an error; ``ProviderError``s are stored in ``error``, not raised."""
    from orchestrator_worker.providers import Finish, ProviderError

    collected = Collected()
    try:
        async with asyncio.timeout(timeout):
            async for item in stream:
                if isinstance(item, Finish):
                    collected.finish = item
                else:
                    collected.chunks.append(item)
    except ProviderError as exc:
        collected.error = exc
    return collected


def free_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@attrs.frozen
class RecordedRequest:
    """One request the fake received."""

    api: str  # "openai" or "gemini" ("unknown" for other paths: they get 404)
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any  # the parsed JSON body (None if it was not JSON)
    raw_body: bytes
    peer: tuple[str, int] | None  # the client's address: same port = same connection
    model: str | None = None

    @property
    def url(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.query.items())
        return self.path + (f"?{query}" if query else "")

    @property
    def prompt(self) -> str | None:
        """The user text, for either API."""
        body = self.body if isinstance(self.body, dict) else {}
        if self.api == "openai":
            users = [m for m in body.get("messages", []) if m.get("role") == "user"]
            return users[-1]["content"] if users else None
        contents = body.get("contents") or [{}]
        parts = contents[-1].get("parts") or [{}]
        text = parts[0].get("text")
        return text if isinstance(text, str) else None


@attrs.frozen
class Reply:
    """One scripted answer; see the module docstring. Build with the classmethods."""

    #: The answer chunks; None echoes the prompt back word by word.
    chunks: Sequence[str] | None = None
    finish_reason: str | None = "stop"  # as the API names it (Gemini: "STOP")
    usage: tuple[int, int] | None = (5, 3)  # (input, output) tokens; None: send none
    model: str | None = None  # the served model reported back (default: the requested one)
    status: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: For errors and odd answers: a JSON value sent as the whole body instead of a stream.
    body: Any = None
    #: Verbatim bytes sent as the (streamed) body, e.g. malformed SSE.
    raw: bytes | None = None
    content_type: str | None = None
    delay: float = 0.0  # before the response headers
    chunk_delay: float = 0.0  # between chunks
    stall: float = 0.0  # a pause after ``stall_after`` chunks, before the rest
    stall_after: int = 0
    cut_after: int | None = None  # drop the connection after this many chunks
    hold: float = 0.0  # after the last event (and [DONE]), keep the body open this long
    done: bool = True  # OpenAI: end with ``data: [DONE]``
    as_json: bool = False  # answer with one non-streamed JSON body
    block_reason: str | None = None  # Gemini: promptFeedback.blockReason (no candidates)
    refusal: str | None = None  # OpenAI: a delta.refusal instead of content
    #: Extra fields merged into every stream event (e.g. an in-stream "error").
    extra_event: Mapping[str, Any] | None = None

    @classmethod
    def answer(cls, *chunks: str, **options: Any) -> Reply:
        """A streamed answer of ``chunks`` (finish ``stop``, usage (5, 3) unless given)."""
        return cls(chunks=chunks, **options)

    @classmethod
    def error(
        cls,
        status: int,
        *,
        code: str | None = None,
        message: str = "scripted failure",
        headers: Mapping[str, str] | None = None,
        details: Sequence[Mapping[str, Any]] = (),
        **options: Any,
    ) -> Reply:
        """An HTTP error with a provider-style JSON body (rendered per API at request time:
        OpenAI ``{"error": {"message", "type", "code"}}``, Gemini ``{"error": {"code",
        "message", "status", "details"}}``); ``code`` is the OpenAI code / Gemini status."""
        return cls(
            status=status,
            headers=dict(headers or {}),
            body=_ErrorBody(code=code, message=message, details=tuple(details)),
            **options,
        )

    @classmethod
    def cut(cls, *chunks: str, **options: Any) -> Reply:
        """Send ``chunks``, then drop the connection mid-stream."""
        return cls(chunks=chunks, cut_after=len(chunks), **options)

    @classmethod
    def unfinished(cls, *chunks: str, **options: Any) -> Reply:
        """Send ``chunks`` and end the body cleanly, but without a finish (or ``[DONE]``)."""
        return cls(chunks=chunks, finish_reason=None, done=False, usage=None, **options)

    @classmethod
    def malformed(cls, raw: bytes, **options: Any) -> Reply:
        """A 200 event stream whose body is ``raw``, verbatim."""
        return cls(raw=raw, **options)

    @classmethod
    def stalled(cls, seconds: float, *chunks: str, after: int = 0, **options: Any) -> Reply:
        """Send ``after`` of ``chunks``, go silent for ``seconds``, then the rest."""
        return cls(chunks=chunks, stall=seconds, stall_after=after, **options)


@attrs.frozen
class _ErrorBody:
    code: str | None
    message: str
    details: tuple[Mapping[str, Any], ...]


class FakeLLM:
    """The fake server; an async context manager (or ``start()``/``close()``)."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        #: Streams whose client went away before the stream ended (a cancel closes it).
        self.disconnected: list[RecordedRequest] = []
        #: Streams sent whole whose body is held open (``Reply.hold``) right now.
        self.holding = 0
        self.default: Reply = Reply()
        self._script: deque[Reply] = deque()
        self._responder: Callable[[RecordedRequest], Reply] | None = None
        self._keys: dict[str, str] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- scripting ---------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue ``replies`` for the next requests, in order."""
        self._script.extend(replies)

    def respond_with(self, responder: Callable[[RecordedRequest], Reply] | None) -> None:
        """Compute each reply from its request (used when the script is empty)."""
        self._responder = responder

    def require_key(self, *, openai: str | None = None, gemini: str | None = None) -> None:
        """Refuse requests that do not carry these keys, as the real APIs would."""
        for api, key in (("openai", openai), ("gemini", gemini)):
            if key is None:
                self._keys.pop(api, None)
            else:
                self._keys[api] = key

    def reset(self) -> None:
        """Forget the script, the responder, required keys and the request log."""
        self._script.clear()
        self._responder = None
        self._keys.clear()
        self.requests.clear()
        self.default = Reply()

    @property
    def count(self) -> int:
        """How many requests arrived."""
        return len(self.requests)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def gemini_base_url(self) -> str:
        return f"{self.url}/v1beta"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> FakeLLM:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLLM:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- serving -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._serve(request)
        finally:
            self._handlers.discard(task)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        api, model, streaming = _route(request.path)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        recorded = RecordedRequest(
            api=api,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            raw_body=raw,
            peer=tuple(peer[:2]) if peer else None,
            model=model if api == "gemini" else (body or {}).get("model"),
        )
        self.requests.append(recorded)
        if api == "unknown":
            return web.json_response({"error": {"message": "no such route"}}, status=404)
        refused = self._check_key(api, request)
        if refused is not None:
            return refused
        if self._script:
            reply = self._script.popleft()
        elif self._responder is not None:
            reply = self._responder(recorded)
        else:
            reply = self.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if isinstance(reply.body, _ErrorBody):
            return web.Response(
                status=reply.status,
                headers=reply.headers,
                body=orjson.dumps(_error_json(api, reply.status, reply.body)),
                content_type="application/json",
            )
        if reply.body is not None:
            return web.Response(
                status=reply.status,
                headers=reply.headers,
                body=orjson.dumps(reply.body),
                content_type=reply.content_type or "application/json",
            )
        render = _OpenAIStream if api == "openai" else _GeminiStream
        events = render(reply, recorded, streaming=streaming)
        if reply.as_json or not streaming:
            return web.Response(
                status=reply.status,
                headers=reply.headers,
                body=orjson.dumps(events.whole()),
                content_type="application/json",
            )
        try:
            return await self._stream(request, reply, events)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.append(recorded)
            raise

    async def _stream(
        self, request: web.Request, reply: Reply, events: _OpenAIStream | _GeminiStream
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = reply.content_type or "text/event-stream"
        await response.prepare(request)
        if reply.raw is not None:
            await response.write(reply.raw)
            await response.write_eof()
            return response
        chunks, tail = events.chunk_events(), events.tail_events()
        for index, payload in enumerate(chunks):
            if index == reply.cut_after:
                return _cut(request, response)
            if reply.stall and index == reply.stall_after:
                await asyncio.sleep(reply.stall)
            elif index and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            await response.write(events.frame(payload))
        if reply.cut_after is not None and reply.cut_after >= len(chunks):
            return _cut(request, response)
        if reply.stall and reply.stall_after >= len(chunks):
            await asyncio.sleep(reply.stall)
        for payload in tail:
            await response.write(events.frame(payload))
        if reply.hold:
            self.holding += 1
            try:
                await asyncio.sleep(reply.hold)
            finally:
                self.holding -= 1
        await response.write_eof()
        return response

    def _check_key(self, api: str, request: web.Request) -> web.Response | None:
        expected = self._keys.get(api)
        if expected is None:
            return None
        if api == "openai":
            got = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if got == expected:
                return None
            # OpenAI's real 401 quotes (part of) the key it received.
            error: dict[str, Any] = {
                "message": f"Incorrect API key provided: {got}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
            return web.json_response({"error": error}, status=401)
        got = request.headers.get("x-goog-api-key", "")
        if got == expected:
            return None
        gemini_error: dict[str, Any] = {
            "code": 400,
            "message": f"API key not valid: {got}. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ],
        }
        return web.json_response({"error": gemini_error}, status=400)


def _route(path: str) -> tuple[str, str | None, bool]:
    """(api, model, streaming) for a request path."""
    if path.endswith("/chat/completions"):
        return "openai", None, True
    if ":" in path and ("/models/" in path or "/tunedModels/" in path):
        resource, _, method = path.rpartition(":")
        model = resource.split("/models/", 1)[-1] if "/models/" in resource else resource
        if method in ("streamGenerateContent", "generateContent"):
            return "gemini", model, method == "streamGenerateContent"
    return "unknown", None, False


def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Drop the connection with the body unfinished."""
    if request.transport is not None:
        request.transport.close()
    response.force_close()
    return response


def _error_json(api: str, status: int, error: _ErrorBody) -> Any:
    if api == "openai":
        return {
            "error": {
                "message": error.message,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": None,
                "code": error.code,
            }
        }
    return {
        "error": {
            "code": status,
            "message": error.message,
            "status": error.code or "UNKNOWN",
            "details": list(error.details),
        }
    }


class _OpenAIStream:
    """Chat Completions chunks for a reply."""

    def __init__(self, reply: Reply, request: RecordedRequest, *, streaming: bool) -> None:
        self.reply = reply
        body = request.body if isinstance(request.body, dict) else {}
        self.model = reply.model or body.get("model") or "fake-model"
        self.id = f"chatcmpl-fake-{next(_ids)}"
        options = body.get("stream_options") or {}
        self.include_usage = bool(options.get("include_usage"))
        self.texts = (
            list(reply.chunks) if reply.chunks is not None else _words(request.prompt or "")
        )

    def _chunk(self, choices: list[Any], **fields: Any) -> dict[str, Any]:
        event = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": choices,
            **fields,
        }
        if self.reply.extra_event:
            event.update(self.reply.extra_event)
        return event

    def chunk_events(self) -> list[Any]:
        first = {"role": "assistant"}
        events = []
        for index, text in enumerate(self.texts):
            delta = {**(first if index == 0 else {}), "content": text}
            events.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        if self.reply.refusal is not None:
            events.append(
                self._chunk(
                    [{"index": 0, "delta": {"refusal": self.reply.refusal}, "finish_reason": None}]
                )
            )
        return events

    def tail_events(self) -> list[Any]:
        events: list[Any] = []
        if self.reply.finish_reason is not None:
            events.append(
                self._chunk([{"index": 0, "delta": {}, "finish_reason": self.reply.finish_reason}])
            )
        if self.reply.usage is not None and self.include_usage:
            prompt, completion = self.reply.usage
            events.append(
                self._chunk(
                    [],
                    usage={
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                )
            )
        if self.reply.done:
            events.append("[DONE]")
        return events

    def frame(self, payload: Any) -> bytes:
        data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
        return b"data: " + data + b"\n\n"

    def whole(self) -> Any:
        usage = self.reply.usage or (0, 0)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.texts)}
        if self.reply.refusal is not None:
            message = {"role": "assistant", "content": None, "refusal": self.reply.refusal}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": self.reply.finish_reason}
            ],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        }


class _GeminiStream:
    """GenerateContentResponse events for a reply (CRLF-framed, as Google sends them)."""

    def __init__(self, reply: Reply, request: RecordedRequest, *, streaming: bool) -> None:
        self.reply = reply
        self.model = reply.model or request.model or "fake-model"
        self.texts = (
            list(reply.chunks) if reply.chunks is not None else _words(request.prompt or "")
        )

    def _event(self, text: str | None, *, last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"index": 0}
        if text is not None:
            candidate["content"] = {"role": "model", "parts": [{"text": text}]}
        if last and self.reply.finish_reason is not None:
            candidate["finishReason"] = self.reply.finish_reason.upper()
        event: dict[str, Any] = {
            "candidates": [candidate],
            "modelVersion": self.model,
            "responseId": "fake-response",
        }
        if self.reply.usage is not None:
            prompt, output = self.reply.usage
            event["usageMetadata"] = {
                "promptTokenCount": prompt,
                **({"candidatesTokenCount": output} if last else {}),
                "totalTokenCount": prompt + (output if last else 0),
            }
        if self.reply.extra_event:
            event.update(self.reply.extra_event)
        return event

    def chunk_events(self) -> list[Any]:
        if self.reply.block_reason is not None:
            return [{"promptFeedback": {"blockReason": self.reply.block_reason}}]
        return [self._event(text, last=False) for text in self.texts]

    def tail_events(self) -> list[Any]:
        if self.reply.block_reason is not None or self.reply.finish_reason is None:
            return []
        return [self._event(None, last=True)]

    def frame(self, payload: Any) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"

    def whole(self) -> Any:
        if self.reply.block_reason is not None:
            return {"promptFeedback": {"blockReason": self.reply.block_reason}}
        event = self._event("".join(self.texts), last=True)
        return event


def _words(text: str) -> list[str]:
    """``text`` in chunks of one word plus the whitespace after it (join back exactly)."""
    chunks: list[str] = []
    current = ""
    for char in text:
        if current and not char.isspace() and current[-1].isspace():
            chunks.append(current)
            current = ""
        current += char
    if current:
        chunks.append(current)
    return chunks
