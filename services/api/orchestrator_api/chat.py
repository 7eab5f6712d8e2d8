"""``POST /v1/chat/completions``: the OpenAI Chat Completions API on top of tasks.

A request becomes a task of the caller's tenant through the same path as ``POST /v1/tasks``
(queued durably, retried, aliases and fallbacks, the prompt cache, joining identical calls,
traced, costed), and the response follows that task: a ``chat.completion`` once it ended,
or, with ``"stream": true``, ``chat.completion.chunk`` Server-Sent Events as its text arrives
and then ``data: [DONE]``. Every response of an accepted request carries ``X-Task-Id``, the
task's id (``GET /v1/tasks/{id}``, same tenant only); a client that goes away does not cancel
the task, which finishes and stays readable.

A request without ``stream`` makes a task without deltas (``TaskMessage.deltas``): nobody
reads its text before the end, so the worker publishes the answer once, in its result, and
the API applies one event for it instead of one per flush. Its task streamed by id
(``GET /v1/tasks/{id}/stream``) shows the text whole at the end; an identical streaming
request does not follow it (``TaskStore.create``).

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the
status the official SDKs map to their exception classes (400, 401, 404, 413, 415, 429 and 503
with ``Retry-After``, 502 for a task the provider failed).

A stream shows the text of the attempt that produced it. Text already sent cannot be taken
back, so when a task is retried after some of an attempt's text went out (a cut stream, say),
the stream ends with an ``error`` (``type`` ``server_error``, ``code`` ``attempt_retried``);
the task goes on, and its final answer is at ``GET /v1/tasks/{X-Task-Id}``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson
from aiohttp import web

from .model import StoredEvent, TaskRecord, TaskStatus
from .problems import Problem, openai_error_body, openai_error_type, trace_headers
from .routes import accept_submission, read_submission
from .state import STATE, ApiState
from .store.errors import StoreError
from .streaming import TERMINAL_EVENTS, follow
from .validation import Submission, parse_submission

__all__ = [
    "chat_completions",
    "completion",
    "submission_body",
]

log = logging.getLogger(__name__)

#: The Chat Completions parameters that map onto the task vocabulary, by their name there.
_PARAMETERS: Final = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_completion_tokens",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "response_format": "response_format",
    "reasoning_effort": "reasoning_effort",
}
#: Fields taken as they are, or checked here.
_OTHER_FIELDS: Final = frozenset(
    {"model", "messages", "stream", "stream_options", "n", "user", "metadata"}
    | {"service_tier", "priority"}
)
#: Our task priorities, by OpenAI's ``service_tier`` (``priority`` and ``priority`` is too).
_SERVICE_TIERS: Final = {"auto": "normal", "default": "normal", "priority": "high", "flex": "low"}
_PRIORITIES: Final = ("high", "normal", "low")
#: Our message roles, by OpenAI's (``developer`` is the newer name for ``system``).
_ROLES: Final = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
#: OpenAI's finish reasons, by the ones providers report.
_FINISH: Final = {
    "stop": "stop",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content_filter",
    "safety": "content_filter",
}
#: How a failed task answers a non-streaming request: status, OpenAI error type and code.
_TASK_ERRORS: Final[Mapping[str, tuple[int, str]]] = {
    "rate_limit": (429, "rate_limit_error"),
    "invalid_request": (400, "invalid_request_error"),
    "content_filter": (400, "invalid_request_error"),
    "invalid_model": (404, "invalid_request_error"),
    # Not a failure: its client cancelled it (POST /v1/tasks/{id}/cancel): a 409 conflict.
    "cancelled": (409, "invalid_request_error"),
}
#: OpenAI error types by HTTP status, for errors before the task exists.
_SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_DONE: Final = b"data: [DONE]\n\n"
_KEEPALIVE: Final = b": keepalive\n\n"


class _BadRequest(Exception):
    """A request this endpoint refuses, naming the parameter."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ---- the handler --------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``. The problems the shared checks raise (401, 415, 413,
    429, 503, a body aiohttp cannot read, a crash) leave the API's error middleware in
    OpenAI's shape, as on every OpenAI path."""
    state = request.app[STATE]
    tenant, body, key = await read_submission(request, state)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _error(400, "The body is not valid JSON.", None)
    try:
        task_body, stream, include_usage = submission_body(data)
        submission = _parse(task_body, state)
    except _BadRequest as exc:
        return _error(400, exc.message, exc.param)
    if not stream:  # nobody reads its text before the end: the worker publishes none
        submission = attrs.evolve(submission, deltas=False)
    # The answer follows the task's events (streamed or not) from its start.
    record, _ = await accept_submission(request, state, tenant, submission, key, follow=True)
    requested = submission.model or "default"
    if stream:
        return await _stream(request, state, tenant, record, requested, include_usage)
    return await _complete(request, state, tenant, record, requested)


def _parse(task_body: dict[str, Any], state: ApiState) -> Submission:
    """The task submission, with the API's validation; its field errors name OpenAI's
    parameter (``messages[1].content``, ``temperature``)."""
    try:
        return parse_submission(
            orjson.dumps(task_body), max_prompt_chars=state.settings.max_prompt_chars
        )
    except Problem as problem:
        if problem.status != 400 or not problem.errors:
            raise
        first = problem.errors[0]
        param = str(first["field"]).removeprefix("parameters.")
        raise _BadRequest(f"{param}: {first['message']}", param) from None


# ---- request mapping ----------------------------------------------------------------------


def submission_body(data: Any) -> tuple[dict[str, Any], bool, bool]:
    """A Chat Completions request as a ``POST /v1/tasks`` body, and whether it streams (and
    with the usage chunk). Raises ``_BadRequest`` for what cannot be a task."""
    if not isinstance(data, dict):
        raise _BadRequest("The body must be a JSON object.", None)
    for name in data:
        if name not in _PARAMETERS and name not in _OTHER_FIELDS:
            raise _BadRequest(f"{name!r} is not supported.", str(name))
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required: a model or alias the workers serve.", "model")
    n = data.get("n")
    if n is not None and n != 1:
        raise _BadRequest("Only n=1 is supported.", "n")
    stream = data.get("stream")
    if stream is not None and type(stream) is not bool:
        raise _BadRequest("'stream' must be true or false.", "stream")
    include_usage = False
    options = data.get("stream_options")
    if options is not None:
        if not stream:
            raise _BadRequest("'stream_options' is only allowed with stream.", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _BadRequest("Only stream_options.include_usage is supported.", "stream_options")
        asked = options.get("include_usage")
        if asked is not None and type(asked) is not bool:
            raise _BadRequest(
                "stream_options.include_usage must be true or false.", "stream_options"
            )
        include_usage = asked is True
    parameters = {
        ours: data[theirs] for theirs, ours in _PARAMETERS.items() if data.get(theirs) is not None
    }
    metadata: dict[str, Any] = {}
    if data.get("metadata") is not None:
        if not isinstance(data["metadata"], dict):
            raise _BadRequest("'metadata' must be an object.", "metadata")
        metadata.update(data["metadata"])
    if data.get("user") is not None:
        if not isinstance(data["user"], str):
            raise _BadRequest("'user' must be a string.", "user")
        metadata["user"] = data["user"]
    body: dict[str, Any] = {"model": model, "messages": _messages(data.get("messages"))}
    priority = _priority(data)
    if priority != "normal":
        body["priority"] = priority
    if parameters:
        body["parameters"] = parameters
    if metadata:
        body["metadata"] = metadata
    return body, bool(stream), include_usage


def _priority(data: dict[str, Any]) -> str:
    """The task priority asked by ``priority`` (ours) or else ``service_tier`` (OpenAI's:
    ``priority`` is high, ``flex`` low, ``auto``/``default`` normal); both are checked."""
    tier = data.get("service_tier")
    if tier is not None and (not isinstance(tier, str) or tier not in _SERVICE_TIERS):
        raise _BadRequest("'service_tier' must be auto, default, priority or flex.", "service_tier")
    priority = data.get("priority")
    if priority is not None:
        if not isinstance(priority, str) or priority not in _PRIORITIES:
            raise _BadRequest("'priority' must be high, normal or low.", "priority")
        return priority
    return "normal" if tier is None else _SERVICE_TIERS[tier]


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list.", "messages")
    out = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _BadRequest(f"{where} must be an object.", where)
        given = message.get("role")
        role = _ROLES.get(given) if isinstance(given, str) else None
        if role is None:
            raise _BadRequest(
                f"{where}.role must be system, developer, user or assistant (tools and "
                "functions are not supported).",
                f"{where}.role",
            )
        unknown = set(message) - {"role", "content", "name"}
        if unknown:
            raise _BadRequest(f"{where}.{sorted(unknown)[0]} is not supported.", where)
        item: dict[str, Any] = {"role": role, "content": _content(message.get("content"), where)}
        if message.get("name") is not None:
            item["name"] = message["name"]
        out.append(item)
    return out


def _content(content: Any, where: str) -> Any:
    """A message's text: a string, or the text of a list of ``{"type": "text"}`` parts."""
    if not isinstance(content, list):
        return content  # the task validation checks it is non-empty text
    texts: list[Any] = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _BadRequest(f"{where}.content: only text parts are supported.", where)
        texts.append(part.get("text"))
    if not all(isinstance(text, str) for text in texts):
        raise _BadRequest(f"{where}.content: a text part needs its 'text'.", where)
    return "".join(texts)


# ---- responses ----------------------------------------------------------------------------


def _usage(data: Mapping[str, Any]) -> dict[str, int] | None:
    usage = data.get("usage")
    if not usage:
        return None
    prompt, completion_tokens = usage["input_tokens"], usage["output_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _finish_reason(reason: str | None) -> str:
    return _FINISH.get(reason or "stop", "stop")


def completion(record: TaskRecord, requested: str) -> dict[str, Any]:
    """The ``chat.completion`` of a task that succeeded."""
    result = record.result
    assert result is not None
    usage = result.usage
    tokens = None if usage is None else (usage.input_tokens, usage.output_tokens)
    return _completion(record, result.text, result.model or requested, tokens, result.finish_reason)


def _completion_of(record: TaskRecord, event: StoredEvent, requested: str) -> dict[str, Any]:
    """The ``chat.completion`` of the task ``record`` from its ``result`` event (which
    carries the whole answer): no read of the record it ended with."""
    data = event.data
    usage = data.get("usage")
    tokens = None if not usage else (usage["input_tokens"], usage["output_tokens"])
    model = data.get("model") or requested
    return _completion(record, data.get("text") or "", model, tokens, data.get("finish_reason"))


def _completion(
    record: TaskRecord,
    text: str,
    model: str,
    tokens: tuple[int, int] | None,
    finish_reason: str | None,
) -> dict[str, Any]:
    prompt, completion_tokens = tokens or (0, 0)
    return {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion",
        "created": int(record.created_at),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(finish_reason),
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }


def _error(
    status: int,
    message: str,
    param: str | None,
    *,
    type_: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    kind = type_ or openai_error_type(status)
    return web.Response(
        body=orjson.dumps(openai_error_body(message, kind, param, code)),
        status=status,
        headers={**trace_headers(), **(headers or {})},
        content_type="application/json",
    )


def _task_failed(record: TaskRecord) -> web.Response:
    error = record.error
    if record.status is TaskStatus.CANCELLED:
        kind, message = "cancelled", f"Task {record.id} was cancelled."
    else:
        kind = error.type if error is not None else "internal"
        message = error.message if error is not None else "The task failed."
    status, type_ = _TASK_ERRORS.get(kind, (502, "server_error"))
    headers = {"X-Task-Id": record.id}
    if status == 429:
        headers["Retry-After"] = "1"
    return _error(status, message, None, type_=type_, code=kind, headers=headers)


async def _ended(
    request: web.Request, state: ApiState, tenant: str, record: TaskRecord
) -> StoredEvent | None:
    """The task's terminal event (None if the server is shutting down or it expired)."""
    events = follow(
        state.store,
        tenant,
        record.id,
        # Event 1 is always the task's queued status: not what we wait for.
        None if record.status.terminal else "1",
        heartbeat=state.heartbeat,
        stop=[state.streams.closing.wait()],
        end_only=True,
    )
    async with contextlib.aclosing(events):
        async for event in events:
            if event is not None and event.event in TERMINAL_EVENTS:
                return event
    return None


async def _complete(
    request: web.Request, state: ApiState, tenant: str, record: TaskRecord, requested: str
) -> web.Response:
    task_header = {"X-Task-Id": record.id}
    try:
        terminal = await _ended(request, state, tenant, record)
        # An answer comes whole in its result event; only a failure needs the record (why).
        failed = None
        if terminal is not None and terminal.event != "result":
            failed = await state.store.get(tenant, record.id)
    except StoreError:
        terminal = failed = None
    if terminal is not None and terminal.event == "result":
        return web.Response(
            body=orjson.dumps(_completion_of(record, terminal, requested)),
            headers={**trace_headers(), **task_header},
            content_type="application/json",
        )
    if failed is not None and failed.status.terminal:
        return _task_failed(failed)
    return _error(
        503,
        "The answer is not available right now; the task goes on: read it at "
        f"/v1/tasks/{record.id}.",
        None,
        code="unavailable",
        headers={**task_header, "Retry-After": "1"},
    )


def _chunk(
    record: TaskRecord,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
) -> bytes:
    body = {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion.chunk",
        "created": int(record.created_at),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return b"data: %s\n\n" % orjson.dumps(body)


async def _stream(
    request: web.Request,
    state: ApiState,
    tenant: str,
    record: TaskRecord,
    requested: str,
    include_usage: bool,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={**_SSE_HEADERS, **trace_headers(), "X-Task-Id": record.id}
    )
    await response.prepare(request)
    state.streams.open += 1
    try:
        with contextlib.suppress(ConnectionResetError):
            await response.write(_chunk(record, requested, {"role": "assistant", "content": ""}))
            ending = await _write_events(response, state, tenant, record, requested, include_usage)
            # The last chunks, [DONE] and the end of the chunked body: one write, not four.
            await response.write_eof(ending + _DONE)
    finally:
        state.streams.open -= 1
    return response


async def _write_events(
    response: web.StreamResponse,
    state: ApiState,
    tenant: str,
    record: TaskRecord,
    requested: str,
    include_usage: bool,
) -> bytes:
    """Write the task's text as chunks; return what ends the stream: its finish (and usage)
    chunk, or an error chunk."""
    streamed_attempt = 0  # the attempt whose text went out, 0 while none did
    streamed: list[str] = []  # that attempt's text sent so far
    events = follow(
        state.store,
        tenant,
        record.id,
        # Event 1 is always the task's queued status, which the stream leaves out.
        None if record.status.terminal else "1",
        heartbeat=state.heartbeat,
        stop=[state.streams.closing.wait()],
    )
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None:
                    await response.write(_KEEPALIVE)
                    continue
                attempt = event.data.get("attempt", 0)
                if streamed_attempt and attempt > streamed_attempt and event.event != "error":
                    return _stream_error(record, "attempt_retried")
                if event.event == "delta":
                    streamed_attempt = attempt
                    streamed.append(event.data["text"])
                    delta = {"content": event.data["text"]}
                    await response.write(_chunk(record, requested, delta))
                elif event.event == "result":
                    ending = _finish(record, requested, event, "".join(streamed))
                    if include_usage:
                        ending += _usage_chunk(record, event, requested)
                    return ending
                elif event.event == "error":
                    kind, message = event.data.get("type"), event.data.get("message")
                    return _stream_error(record, kind, message)
                elif event.event == "cancelled":
                    return _stream_error(record, "cancelled", f"Task {record.id} was cancelled.")
    except StoreError:
        log.warning("chat stream of task %s ended: the store is unavailable", record.id)
    return _stream_error(record, "unavailable")


def _finish(record: TaskRecord, requested: str, event: StoredEvent, streamed: str) -> bytes:
    """The text not streamed yet, then the finish chunk. The result carries the whole answer:
    all of it when no delta came (an answer faster than the first delta), else what the
    deltas missed. The deltas of an attempt spell its result, but with API replicas applying
    results in parallel a terminal event may overtake the attempt's last delta, which the
    store then drops: the result's text after what was streamed is that delta."""
    model = event.data.get("model") or requested
    text = event.data.get("text") or ""
    missed = b""
    if text.startswith(streamed) and len(text) > len(streamed):
        missed = _chunk(record, model, {"content": text[len(streamed) :]})
    elif not text.startswith(streamed):  # pragma: no cover - the deltas spell the result
        log.warning("chat stream of task %s: its deltas are not its result's text", record.id)
    finish = _finish_reason(event.data.get("finish_reason"))
    return missed + _chunk(record, model, {}, finish)


def _usage_chunk(record: TaskRecord, event: StoredEvent, requested: str) -> bytes:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion.chunk",
        "created": int(record.created_at),
        "model": event.data.get("model") or requested,
        "choices": [],
        "usage": _usage(event.data)
        or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    return b"data: %s\n\n" % orjson.dumps(body)


def _stream_error(record: TaskRecord, kind: str | None, message: str | None = None) -> bytes:
    messages = {
        "attempt_retried": "The task is being retried after this text was sent; read its "
        f"answer at /v1/tasks/{record.id}.",
        "unavailable": "The stream ended early; the task goes on: read it at "
        f"/v1/tasks/{record.id}.",
    }
    message = messages.get(kind or "") or message or f"The task failed ({kind})."
    return b"data: %s\n\n" % orjson.dumps(
        openai_error_body(message, "server_error", None, kind or "internal")
    )
