"""The JSON shapes the API answers with (the ``Task``, ``TaskList`` and ``Health`` schemas of
openapi.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchestrator_tasks import error_payload, usage_payload

from .model import TaskPage, TaskRecord

__all__ = ["task_list_view", "task_view", "timestamp"]


def timestamp(seconds: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime (orjson writes RFC 3339)."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def task_view(record: TaskRecord) -> dict[str, Any]:
    """The task as ``GET /v1/tasks/{id}`` shows it; every key is always present."""
    result = record.result
    usage = result.usage if result is not None else None
    return {
        "id": record.id,
        "status": record.status.value,
        "created_at": timestamp(record.created_at),
        "started_at": timestamp(record.started_at),
        "finished_at": timestamp(record.finished_at),
        "attempts": record.attempts,
        "model": record.model,
        "metadata": record.metadata,
        "trace_id": record.trace_id,
        "result": None
        if result is None
        else {
            "text": result.text,
            "usage": usage_payload(usage),
            "provider": result.provider,
            "model": result.model,
            "finish_reason": result.finish_reason,
            "cost_usd": result.cost_usd,
        },
        "error": error_payload(record.error),
        "cached": record.cached,
        "joined": record.joined is not None,
        "partial_text": record.partial_text,
        "priority": record.priority,
        # From submission to the start of its first attempt (null until it started).
        "queue_wait": None
        if record.started_at is None
        else max(0.0, record.started_at - record.created_at),
    }


def task_list_view(page: TaskPage) -> dict[str, Any]:
    """A page of tasks in OpenAI's list shape: each item as ``task_view``; ``first_id`` and
    ``last_id`` are null for an empty page; pass ``last_id`` as ``after`` for the next."""
    data = [task_view(record) for record in page.records]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }
