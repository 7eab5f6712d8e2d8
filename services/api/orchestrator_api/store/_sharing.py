"""Shared answers, the same in every store: prompt cache hits and tasks that join another.

A task submitted with a cache key (``TaskStore.create``) is one of three kinds:

- a *cache hit*: the tenant's identical task succeeded within the TTL, so the new task is
  created already ``succeeded`` with a copy of that answer (``cached``), and never published;
- a *follower*: an identical task (its *leader*) is queued or running, so the new task keeps
  its own id, creation time and metadata but shows the leader's status, attempts, events,
  result and error (``joined``), and is never published;
- a *leader*: neither, so it is published and runs; identical submissions join it until it
  ends. Its success fills the cache; its failure caches nothing (its followers fail with it).

A reused answer cost nothing: its ``cost_usd`` is 0.0 (the leader's result keeps the real
cost), so summing ``cost_usd`` over tasks gives what was spent.
"""

from __future__ import annotations

from typing import Any

import attrs

from orchestrator_tasks.messages import ErrorInfo

from ..model import StoredEvent, TaskRecord, TaskResult, TaskStatus

__all__ = [
    "ORPHANED",
    "cache_hit",
    "cancelled",
    "cancelled_data",
    "cancelled_log",
    "follow",
    "mirror",
    "orphaned",
    "partial_text",
    "result_data",
    "reused",
    "reused_events",
]

#: What a follower fails with when its leader could not be queued (its publish failed).
ORPHANED = ErrorInfo(
    type="unavailable",
    message="the identical task this one joined could not be queued; submit it again",
)


def reused(result: TaskResult) -> TaskResult:
    """``result`` as a task that did not produce it shows it: nothing spent."""
    # Built directly, not with attrs.evolve (several times slower): a hit runs this.
    return TaskResult(
        text=result.text,
        provider=result.provider,
        model=result.model,
        usage=result.usage,
        finish_reason=result.finish_reason,
        cost_usd=0.0,
    )


def result_data(result: TaskResult, attempt: int) -> dict[str, Any]:
    """The ``result`` event data of ``result`` (the keys ``_steps.step_for`` writes)."""
    usage = result.usage
    return {
        "text": result.text,
        "usage": (
            None
            if usage is None
            else {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
        ),
        "provider": result.provider,
        "model": result.model,
        "finish_reason": result.finish_reason,
        "cost_usd": result.cost_usd,
        "attempt": attempt,
    }


def cache_hit(record: TaskRecord, result: TaskResult, at: float) -> TaskRecord:
    """The new ``record`` served from the cache: succeeded at once, no attempt made."""
    # Built directly, not with attrs.evolve (several times slower): this runs per request.
    return TaskRecord(
        id=record.id,
        tenant=record.tenant,
        status=TaskStatus.SUCCEEDED,
        created_at=record.created_at,
        model=record.model,
        started_at=at,
        finished_at=at,
        attempts=0,
        result=reused(result),
        metadata=record.metadata,
        trace_id=record.trace_id,
        cached=True,
        priority=record.priority,
    )


def follow(
    own: TaskRecord,
    leader: str,
    status: TaskStatus,
    started: float | None,
    attempts: int,
    finished: float | None = None,
    result: TaskResult | None = None,
    error: ErrorInfo | None = None,
) -> TaskRecord:
    """A follower of ``leader`` as it is shown: its own id, times of creation, model,
    metadata and trace; the leader's progress (a start before the follower existed shows as
    its creation)."""
    if started is not None and started < own.created_at:
        started = own.created_at
    if finished is not None and started is not None and finished < started:
        finished = started
    return TaskRecord(
        id=own.id,
        tenant=own.tenant,
        status=status,
        created_at=own.created_at,
        model=own.model,
        started_at=started,
        finished_at=finished,
        attempts=attempts,
        result=None if result is None else reused(result),
        error=error,
        metadata=own.metadata,
        trace_id=own.trace_id,
        cached=status is TaskStatus.SUCCEEDED,
        joined=leader,
        priority=own.priority,
    )


def mirror(own: TaskRecord, leader: TaskRecord) -> TaskRecord:
    """A follower as it is shown through its ``leader``'s record (see ``follow``)."""
    return follow(
        own,
        leader.id,
        leader.status,
        leader.started_at,
        leader.attempts,
        leader.finished_at,
        leader.result,
        leader.error,
    )


def cancelled(shown: TaskRecord, at: float, text: str | None) -> TaskRecord:
    """A task as its cancel ends it: ``cancelled`` at ``at`` (never started if it had not),
    with the text answered so far; a follower's shown progress becomes its own."""
    return attrs.evolve(
        shown,
        status=TaskStatus.CANCELLED,
        finished_at=at,
        result=None,
        error=None,
        cached=False,
        partial_text=text,
    )


def partial_text(log: list[StoredEvent], attempt: int) -> str | None:
    """The text of ``attempt``'s deltas in ``log`` (None if it sent none)."""
    parts = [
        str(e.data.get("text", ""))
        for e in log
        if e.event == "delta" and e.data.get("attempt") == attempt
    ]
    return "".join(parts) if parts else None


def cancelled_data(record: TaskRecord) -> dict[str, Any]:
    """The data of the ``cancelled`` event of ``record``."""
    return {"partial_text": record.partial_text or "", "attempt": record.attempts}


def cancelled_log(own: list[StoredEvent], record: TaskRecord) -> list[StoredEvent]:
    """The log of a task that ended cancelled alone while others follow its run: its share
    of the run's log, then its own ``cancelled`` event."""
    event = StoredEvent(id=str(len(own) + 1), event="cancelled", data=cancelled_data(record))
    return [*own, event]


def orphaned(own: TaskRecord, at: float) -> TaskRecord:
    """A follower whose leader was discarded: failed on its own (``joined`` is kept)."""
    return attrs.evolve(own, status=TaskStatus.FAILED, finished_at=at, error=ORPHANED)


def reused_events(events: list[StoredEvent]) -> list[StoredEvent]:
    """A leader's events as its followers read them: the result shows nothing spent."""
    if not events or events[-1].event != "result":
        return events
    last = events[-1]
    return [*events[:-1], attrs.evolve(last, data={**last.data, "cost_usd": 0.0})]
