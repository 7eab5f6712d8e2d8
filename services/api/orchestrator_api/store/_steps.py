"""What one result event does to a task, shared by every store implementation.

A ``Step`` is the event as the store applies it: the log entry it appends (event name and
data, always with ``attempt`` so a client can discard text of an earlier attempt) and the
record fields it sets. Both stores run the same ordering rules (``Cursor``), the Redis store
inside a Lua script.
"""

from __future__ import annotations

from typing import Any

import attrs

from orchestrator_tasks.messages import ErrorInfo, EventKind, ResultEvent

from ..model import TaskResult, TaskStatus

#: Data of the first log entry of every task, written (or implied) by ``create``.
QUEUED_DATA: dict[str, Any] = {"status": TaskStatus.QUEUED.value, "attempt": 0}

#: The next seq of an attempt whose events are over: a requeued task's (``TaskStore.requeue``),
#: so every event of that attempt counts as a duplicate and the next attempt takes over.
DONE_SEQ = 2**53

#: What a FAILED event without error details is recorded as.
UNKNOWN_ERROR = ErrorInfo(type="internal", message="the worker reported a failure without details")


@attrs.frozen
class Step:
    """One applied event: the log entry to append and the record update."""

    event: str
    data: dict[str, Any]
    status: TaskStatus
    attempt: int
    at: float
    result: TaskResult | None = None
    error: ErrorInfo | None = None
    #: When the attempt began, if the worker said (else ``at`` stands for it).
    started: float | None = None
    #: A cancelled attempt's text so far.
    partial_text: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal


def step_for(event: ResultEvent) -> Step:
    """Translate a worker's result event into the store's step."""
    attempt = event.attempt
    if event.kind is EventKind.STARTED:
        data: dict[str, Any] = {"status": TaskStatus.RUNNING.value, "attempt": attempt}
        return Step("status", data, TaskStatus.RUNNING, attempt, event.at, started=event.started_at)
    if event.kind is EventKind.DELTA:
        data = {"text": event.text, "attempt": attempt}
        return Step("delta", data, TaskStatus.RUNNING, attempt, event.at)
    if event.kind is EventKind.SUCCEEDED:
        result = TaskResult(
            text=event.text,
            provider=event.provider,
            model=event.model,
            usage=event.usage,
            finish_reason=event.finish_reason,
            cost_usd=event.cost_usd,
        )
        usage = event.usage
        data = {
            "text": event.text,
            "usage": (
                None
                if usage is None
                else {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
            ),
            "provider": event.provider,
            "model": event.model,
            "finish_reason": event.finish_reason,
            "cost_usd": event.cost_usd,
            "attempt": attempt,
        }
        return Step(
            "result",
            data,
            TaskStatus.SUCCEEDED,
            attempt,
            event.at,
            result=result,
            started=event.started_at,
        )
    if event.kind is EventKind.CANCELLED:
        data = {"partial_text": event.text, "attempt": attempt}
        return Step(
            "cancelled",
            data,
            TaskStatus.CANCELLED,
            attempt,
            event.at,
            partial_text=event.text or None,
            started=event.started_at,
        )
    error = event.error or UNKNOWN_ERROR
    data = {"type": error.type, "message": error.message, "attempt": attempt}
    return Step(
        "error", data, TaskStatus.FAILED, attempt, event.at, error=error, started=event.started_at
    )


@attrs.define
class Cursor:
    """Where a task's event application stands: the attempt being followed and the next seq.

    The ordering rules (the Redis Lua script implements the same ones):

    - once the record is terminal, every event is ignored (until it is requeued: then events
      of the attempts so far are, and the next attempt's apply);
    - an event of an attempt older than ``attempt`` is ignored; one of a newer attempt
      switches to it (seq restarts at 0, events buffered for the old attempt are dropped);
    - ``seq < next_seq`` is a duplicate: ignored;
    - ``seq == next_seq`` is applied, then any buffered successors in seq order;
    - ``seq > next_seq`` (an event overtook its predecessor, e.g. two API replicas consuming
      in parallel) is buffered until the gap fills, unless it is terminal: a terminal event is
      applied at once (its result carries the whole answer, so a missing delta cannot matter)
      and the buffer is dropped.
    """

    attempt: int = 0
    next_seq: int = 0
    buffer: dict[int, ResultEvent] = attrs.field(factory=dict)

    def admit(self, event: ResultEvent) -> list[ResultEvent] | None:
        """The events to apply now, in order (possibly none: buffered), or None if ignored."""
        if event.attempt < self.attempt:
            return None
        if event.attempt > self.attempt:
            self.attempt, self.next_seq = event.attempt, 0
            self.buffer.clear()
        if event.seq < self.next_seq:
            return None
        if event.terminal:
            self.buffer.clear()
            self.next_seq = event.seq + 1
            return [event]
        if event.seq > self.next_seq:
            if event.seq in self.buffer:
                return None
            self.buffer[event.seq] = event
            return []
        ready = [event]
        self.next_seq += 1
        while (successor := self.buffer.pop(self.next_seq, None)) is not None:
            ready.append(successor)
            self.next_seq += 1
            if successor.terminal:  # pragma: no cover - terminal events are never buffered
                break
        return ready
