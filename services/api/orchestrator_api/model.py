"""The API's view of a task: its record and its event log entries."""

from __future__ import annotations

import enum
from typing import Any, Final

import attrs

from orchestrator_tasks.messages import ErrorInfo, Usage


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


@attrs.frozen
class TaskResult:
    text: str
    provider: str | None = None
    model: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    #: What producing the answer cost in US dollars (the worker's price table); None when
    #: unpriced; 0.0 for an answer reused from the prompt cache or an identical task.
    cost_usd: float | None = None


@attrs.frozen
class TaskRecord:
    """What ``GET /v1/tasks/{id}`` shows. The prompt itself is not kept here."""

    id: str
    tenant: str
    status: TaskStatus
    created_at: float
    model: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result: TaskResult | None = None
    error: ErrorInfo | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    trace_id: str | None = None
    #: The answer is another task's (the tenant's prompt cache, or the identical task this
    #: one joined), not a provider call of this task's own.
    cached: bool = False
    #: The id of the identical in-flight task this one follows (its status, events, result
    #: and error), instead of running itself; None for a task that runs (or a cache hit).
    joined: str | None = None
    #: A task cancelled while it ran: the text answered until it was stopped.
    partial_text: str | None = None
    #: Its priority within the tenant's share (``high``, ``normal``, ``low``).
    priority: str = "normal"


@attrs.frozen
class Cancellation:
    """What ``TaskStore.cancel`` did: the task as it now stands, and whether its run is to
    be stopped (the workers told, by the task's cancel flag): False when the run goes on
    for others (the task followed another, or others follow it)."""

    record: TaskRecord
    stop_run: bool


@attrs.frozen
class StoredEvent:
    """One entry of a task's event log, as served over SSE and WebSocket.

    ``id`` is opaque to clients and strictly increasing within one task's log, so
    ``Last-Event-ID`` resumes exactly after it. ``event`` is one of ``status``, ``delta``,
    ``result``, ``error``, ``cancelled``.
    """

    id: str
    event: str
    data: dict[str, Any]


#: The log entries that end a task (one followed by more is not the end: a requeued task).
TERMINAL_EVENTS: Final = frozenset({"result", "error", "cancelled"})


@attrs.frozen
class TaskPage:
    """One page of a tenant's tasks (``TaskStore.list_tasks``), newest first."""

    records: tuple[TaskRecord, ...]
    #: More tasks follow the last one (ask again with it as ``after``).
    has_more: bool
