"""The wire contract between the API and the workers: what travels on the two streams.

``TaskMessage`` is the payload of an entry on the tasks stream (``REDIS_STREAM_ID``);
``ResultEvent`` the payload of an entry on the results stream (``REDIS_RESULTS_STREAM_ID``).
Both travel in the broker's ``Message.payload`` as plain JSON-compatible dicts, encoded and
decoded here and nowhere else: ``encode_task``/``decode_task`` and
``encode_event``/``event_payload``/``decode_event``, which are also ``converter``'s hooks for
the two classes.

Every result event carries ``attempt`` (the task's ``prior_attempts`` plus its delivery's
delivery count) and ``seq`` (0, 1, 2, ... within that attempt, in the order the worker
published them), so the API can apply them in order and drop redelivered duplicates:
``(task_id, attempt, seq)`` identifies an event. ``prior_attempts`` is 0 for a task as the
API submitted it; a dead letter replayed by an operator (``ai-orchestrator dead-letters
replay``) goes out again with the attempts it had made, so its attempts keep counting up
(the API's record ignores events of attempts it has seen) while the worker's retry budget,
which counts deliveries, starts afresh. A worker older than this field numbers a replayed
task's attempts from 1 again, which the API ignores: upgrade the workers first.

The two encoders are written out by hand: they run for every task the API publishes and
every event a worker publishes, and cattrs' generated function costs ~8x more for a task
(1.8 vs 0.2 us) and ~2.6x more for an event built and unstructured (9.4 vs 3.6 us, measured
with timeit on the development VM). The task decoder is written out because it must refuse
what cattrs would coerce (``123`` or ``None`` as ``"123"``/``"None"`` for a ``str``) and
salvage the task id for the failure event; it costs what cattrs' does. ``tests/tasks``
holds each codec equal to what cattrs generates for the same class, so a field added to a
class and not to its codec fails there.

A task is a conversation: ``messages``, a tuple of ``ChatMessage`` (``system``, ``user`` and
``assistant`` turns, in order). The API turns its ``prompt``/``system`` shorthand into
messages (a system message first, then one user message), so the tasks stream carries only
``messages``. For a rolling upgrade, ``decode_task`` still reads a task from an older API,
which carried ``prompt`` (and ``system``) instead, and converts it the same way; an older
worker cannot read a newer task (it has no ``prompt``) and fails it as invalid, so upgrade
the workers before the API.

``deltas`` (False: the worker publishes the answer only in the terminal event) is read as
True when absent (an older API's task); an older worker ignores it and publishes deltas
anyway, which costs the API more events but changes no answer.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Final, Literal, TypeAlias

import attrs
from cattrs import BaseValidationError
from cattrs.preconf.orjson import OrjsonConverter, make_converter

from .errors import InvalidResultEvent, InvalidTask

__all__ = [
    "ROLES",
    "TASK_FIELDS",
    "TASK_PRIORITIES",
    "ChatMessage",
    "ErrorInfo",
    "EventKind",
    "ResultEvent",
    "Role",
    "TaskMessage",
    "TaskPriority",
    "Usage",
    "converter",
    "decode_event",
    "decode_task",
    "encode_event",
    "encode_task",
    "error_payload",
    "event_payload",
    "messages_of",
    "messages_payload",
    "usage_payload",
]


class EventKind(enum.StrEnum):
    STARTED = "started"  # an attempt began (attempt > 1 means earlier text is void)
    DELTA = "delta"  # a chunk of answer text (coalesced, ~100 ms worth)
    SUCCEEDED = "succeeded"  # terminal: the whole answer and usage
    FAILED = "failed"  # terminal: the error
    CANCELLED = "cancelled"  # terminal: cancelled by its client; ``text`` is what was answered


@attrs.frozen
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@attrs.frozen
class ErrorInfo:
    type: str  # e.g. "timeout", "rate_limit", "invalid_request", "internal"
    message: str


#: A task's priority within its tenant's share, most urgent first (``TaskMessage.priority``).
TaskPriority: TypeAlias = Literal["high", "normal", "low"]
TASK_PRIORITIES: Final[tuple[TaskPriority, ...]] = ("high", "normal", "low")

#: Who speaks a turn of a conversation.
Role: TypeAlias = Literal["system", "user", "assistant"]
ROLES: Final[tuple[Role, ...]] = ("system", "user", "assistant")


@attrs.frozen
class ChatMessage:
    """One turn of a conversation. ``name`` tells participants of one role apart, for the
    providers that take it (OpenAI-compatible ones)."""

    role: Role
    content: str
    name: str | None = None


def messages_of(prompt: str, system: str | None = None) -> tuple[ChatMessage, ...]:
    """The conversation the ``prompt``/``system`` shorthand stands for: the system message
    (when there is one), then the prompt as one user message."""
    user = ChatMessage(role="user", content=prompt)
    return (ChatMessage(role="system", content=system), user) if system else (user,)


@attrs.frozen
class TaskMessage:
    """A task as the API publishes it: the conversation to answer, and how."""

    task_id: str
    tenant: str
    messages: tuple[ChatMessage, ...]
    model: str | None = None
    parameters: dict[str, Any] = attrs.field(factory=dict)
    submitted_at: float = 0.0
    #: Attempts made before this task was last replayed from the dead letters (0: never):
    #: an attempt's number is this plus its delivery count.
    prior_attempts: int = 0
    #: How urgent it is within its tenant's share (the broker's ``Priority``): the API
    #: publishes it with this priority and the tenant as the fairness key.
    priority: TaskPriority = "normal"
    #: Whether the worker publishes the answer's text as it arrives (``delta`` events).
    #: False when nobody asked to stream it (a non-streamed chat completion, a batch line):
    #: the text then comes whole in the terminal event, and the task costs one result
    #: event instead of one per flush. A task from an older API has none: True.
    deltas: bool = True


@attrs.frozen
class ResultEvent:
    """One step of one attempt of a task, as a worker publishes it."""

    task_id: str
    tenant: str
    kind: EventKind
    attempt: int
    seq: int
    at: float
    text: str = ""  # DELTA: the chunk; SUCCEEDED: the whole answer; CANCELLED: the partial one
    provider: str | None = None
    model: str | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    finish_reason: str | None = None
    #: SUCCEEDED: what the answer cost in US dollars, from the worker's price table
    #: (``MODEL_PRICES``) and ``usage``; None when the model has no price or no usage.
    cost_usd: float | None = None
    #: STARTED and terminal events: when the attempt began (the worker's clock). An attempt
    #: too short for a ``started`` event still tells the API its real start this way.
    started_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in _TERMINAL


_TERMINAL: Final = frozenset({EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED})


# --- values ------------------------------------------------------------------------------


def usage_payload(usage: Usage | None) -> dict[str, int] | None:
    """``usage`` as JSON (None stays None)."""
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def error_payload(error: ErrorInfo | None) -> dict[str, str] | None:
    """``error`` as JSON (None stays None)."""
    return None if error is None else {"type": error.type, "message": error.message}


# --- tasks -------------------------------------------------------------------------------

#: The payload keys ``decode_task`` reads; unknown extra keys are ignored (an older worker
#: reading a newer API's task).
TASK_FIELDS: Final = frozenset(
    {
        "task_id",
        "tenant",
        "messages",
        "model",
        "parameters",
        "submitted_at",
        "prior_attempts",
        "priority",
        "deltas",
    }
)


def messages_payload(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """``messages`` as JSON."""
    return [{"role": m.role, "content": m.content, "name": m.name} for m in messages]


def encode_task(task: TaskMessage) -> dict[str, Any]:
    """The tasks stream payload of ``task``."""
    return {
        "task_id": task.task_id,
        "tenant": task.tenant,
        "messages": messages_payload(task.messages),
        "model": task.model,
        "parameters": task.parameters,
        "submitted_at": task.submitted_at,
        "prior_attempts": task.prior_attempts,
        "priority": task.priority,
        "deltas": task.deltas,
    }


def _decode_messages(value: Any) -> tuple[ChatMessage, ...]:
    """The conversation in a payload's ``messages``; raises ``ValueError`` naming the field
    (``messages[3].role``)."""
    if type(value) is not list or not value:
        raise ValueError("messages is not a non-empty list")
    messages = []
    for index, item in enumerate(value):
        field = f"messages[{index}]"
        if type(item) is not dict:
            raise ValueError(f"{field} is not an object")
        role, content, name = item.get("role"), item.get("content"), item.get("name")
        if role not in ROLES:
            raise ValueError(f"{field}.role is not one of {', '.join(ROLES)}")
        if type(content) is not str:
            raise ValueError(f"{field}.content is missing or not a string")
        if name is not None and type(name) is not str:
            raise ValueError(f"{field}.name is not a string")
        messages.append(ChatMessage(role=role, content=content, name=name))
    return tuple(messages)


def decode_task(payload: Any) -> TaskMessage:
    """The task in a tasks stream payload; raises ``InvalidTask`` with a short reason."""
    if not isinstance(payload, dict):
        raise InvalidTask(f"payload is a JSON {type(payload).__name__}, not an object")
    task_id, tenant = payload.get("task_id"), payload.get("tenant")
    salvage: dict[str, str | None] = {
        "task_id": task_id if isinstance(task_id, str) and task_id else None,
        "tenant": tenant if isinstance(tenant, str) else None,
    }
    # cattrs would turn 123 or None into "123"/"None" for a str field: check those first.
    for name in ("task_id", "tenant"):
        if not isinstance(payload.get(name), str):
            raise InvalidTask(f"{name} is missing or not a string", **salvage)
    if not task_id:
        raise InvalidTask("task_id is empty", **salvage)
    if payload.get("model") is not None and not isinstance(payload["model"], str):
        raise InvalidTask("model is not a string", **salvage)
    if "messages" in payload:
        try:
            messages = _decode_messages(payload["messages"])
        except ValueError as exc:
            raise InvalidTask(str(exc), **salvage) from None
    else:  # an older API's task: the prompt/system shorthand
        prompt, system = payload.get("prompt"), payload.get("system")
        if not isinstance(prompt, str):
            raise InvalidTask("messages (or an older task's prompt) is missing", **salvage)
        if system is not None and not isinstance(system, str):
            raise InvalidTask("system is not a string", **salvage)
        messages = messages_of(prompt, system)
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidTask("parameters is not an object", **salvage)
    submitted_at = payload.get("submitted_at")
    if submitted_at is not None and (
        isinstance(submitted_at, bool) or not isinstance(submitted_at, int | float)
    ):
        raise InvalidTask("submitted_at is not a number", **salvage)
    prior_attempts = payload.get("prior_attempts")
    if prior_attempts is None:
        prior_attempts = 0
    elif type(prior_attempts) is not int or prior_attempts < 0:
        raise InvalidTask("prior_attempts is not a whole number, zero or more", **salvage)
    raw_priority = payload.get("priority")
    priority: TaskPriority = "normal"  # also an older API's task, which had none
    if raw_priority is not None:
        if raw_priority not in TASK_PRIORITIES:
            raise InvalidTask(f"priority is not one of {', '.join(TASK_PRIORITIES)}", **salvage)
        priority = raw_priority
    deltas = payload.get("deltas", True)  # an older API's task has none
    if type(deltas) is not bool:
        raise InvalidTask("deltas is not true or false", **salvage)
    return TaskMessage(
        task_id=task_id,
        tenant=payload["tenant"],
        messages=messages,
        model=payload.get("model"),
        parameters=parameters if parameters is not None else {},
        submitted_at=float(submitted_at) if submitted_at is not None else 0.0,
        prior_attempts=prior_attempts,
        priority=priority,
        deltas=deltas,
    )


# --- result events -----------------------------------------------------------------------


def event_payload(
    *,
    task_id: str,
    tenant: str,
    kind: EventKind,
    attempt: int,
    seq: int,
    at: float,
    text: str = "",
    provider: str | None = None,
    model: str | None = None,
    usage: Usage | None = None,
    error: ErrorInfo | None = None,
    finish_reason: str | None = None,
    cost_usd: float | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """The results stream payload of the ``ResultEvent`` with these fields, without building
    the event first: the worker's hottest path (every event of every task)."""
    return {
        "task_id": task_id,
        "tenant": tenant,
        "kind": kind.value,
        "attempt": attempt,
        "seq": seq,
        "at": at,
        "text": text,
        "provider": provider,
        "model": model,
        "usage": usage_payload(usage),
        "error": error_payload(error),
        "finish_reason": finish_reason,
        "cost_usd": cost_usd,
        "started_at": started_at,
    }


def encode_event(event: ResultEvent) -> dict[str, Any]:
    """The results stream payload of ``event``."""
    return event_payload(
        task_id=event.task_id,
        tenant=event.tenant,
        kind=event.kind,
        attempt=event.attempt,
        seq=event.seq,
        at=event.at,
        text=event.text,
        provider=event.provider,
        model=event.model,
        usage=event.usage,
        error=event.error,
        finish_reason=event.finish_reason,
        cost_usd=event.cost_usd,
        started_at=event.started_at,
    )


#: Structures by cattrs' generated functions (types checked and converted, nested values
#: built); the checks of ``decode_event`` come on top.
_structuring = make_converter()


def decode_event(payload: Any) -> ResultEvent:
    """The event in a results stream payload; raises ``InvalidResultEvent`` with the reason."""
    try:
        event = _structuring.structure(payload, ResultEvent)
    except (BaseValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidResultEvent(f"not a ResultEvent: {type(exc).__name__}: {exc}") from exc
    if not event.task_id or not event.tenant:
        raise InvalidResultEvent("not a ResultEvent: empty task_id or tenant")
    if event.attempt < 1 or event.seq < 0:
        raise InvalidResultEvent(
            f"not a ResultEvent: attempt {event.attempt} / seq {event.seq} out of range"
        )
    return event


def _make_converter() -> OrjsonConverter:
    contract = make_converter()
    contract.register_unstructure_hook(TaskMessage, encode_task)
    contract.register_structure_hook(TaskMessage, lambda payload, _: decode_task(payload))
    contract.register_unstructure_hook(ResultEvent, encode_event)
    contract.register_structure_hook(ResultEvent, lambda payload, _: decode_event(payload))
    return contract


#: The contract's converter: its hooks for ``TaskMessage`` and ``ResultEvent`` are the
#: codecs above (built once), so ``converter.unstructure``/``structure`` and the functions
#: give the same payloads and the same errors.
converter = _make_converter()
