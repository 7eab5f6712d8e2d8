"""The Files and Batches API's JSON shapes: OpenAI's ``file``, ``batch`` and ``list``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .model import BatchRecord, FileInfo

__all__ = ["batch_view", "file_view", "list_view"]


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


def file_view(info: FileInfo) -> dict[str, Any]:
    """OpenAI's ``FileObject``."""
    return {
        "id": info.id,
        "object": "file",
        "bytes": info.bytes,
        "created_at": int(info.created_at),
        "expires_at": int(info.expires_at),
        "filename": info.filename,
        "purpose": info.purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_view(record: BatchRecord) -> dict[str, Any]:
    """OpenAI's ``Batch``; ``request_counts`` from the lines the store counted."""
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": {"object": "list", "data": list(record.errors)} if record.errors else None,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.shown_status.value,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "created_at": int(record.created_at),
        "in_progress_at": _seconds(record.in_progress_at),
        "expires_at": int(record.expires_at),
        "finalizing_at": _seconds(record.finalizing_at),
        "completed_at": _seconds(record.completed_at),
        "failed_at": _seconds(record.failed_at),
        "expired_at": _seconds(record.expired_at),
        "cancelling_at": _seconds(record.cancelling_at),
        "cancelled_at": _seconds(record.cancelled_at),
        "request_counts": {
            "total": record.lines,
            "completed": record.completed,
            "failed": record.failed,
        },
        "metadata": record.metadata,
    }


def list_view(data: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page."""
    return {
        "object": "list",
        "data": list(data),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
