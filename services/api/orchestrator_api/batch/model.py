"""What the Files and Batches APIs keep: file descriptions, batches, and a batch's lines."""

from __future__ import annotations

import enum
from typing import Any, Final

import attrs

__all__ = [
    "CHUNK_BYTES",
    "BatchRecord",
    "BatchStatus",
    "FileInfo",
    "LineResult",
    "PendingLine",
]

#: The size of every stored chunk of a file but its last: a byte offset names its chunk by
#: division, so reading resumes anywhere without scanning.
CHUNK_BYTES: Final = 256 * 1024


@attrs.frozen
class FileInfo:
    """An uploaded (``purpose`` ``batch``) or produced (``batch_output``) JSONL file."""

    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: float
    expires_at: float


class BatchStatus(enum.StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


@attrs.frozen
class BatchRecord:
    """A batch as its runner last saved it, with the counters the stores keep beside it.

    ``lines`` (the ``total`` of ``request_counts``), ``completed``, ``failed`` and
    ``cursor`` (the input bytes read so far) are the store's, changed only with the lines
    they count (``BatchStore.add_lines``, ``finish_lines``). ``cancelling_at`` is set by a
    cancel from any replica (``BatchStore.request_cancel``); the shown status follows it.
    """

    id: str
    tenant: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: BatchStatus
    created_at: float
    expires_at: float
    metadata: dict[str, str] | None = None
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    #: Batch-level errors (``failed``): ``{"code", "message", "line", "param"}`` each.
    errors: tuple[dict[str, Any], ...] = ()
    #: The whole input has been read (every line is pending or has its result).
    ingested: bool = False
    #: The unfinished tasks were told to cancel (after ``cancelling_at`` or expiry).
    stopped: bool = False
    lines: int = 0
    completed: int = 0
    failed: int = 0
    cursor: int = 0

    @property
    def shown_status(self) -> BatchStatus:
        """The status clients see: ``cancelling`` once asked, until the runner ends it."""
        if self.cancelling_at is not None and self.status in (
            BatchStatus.VALIDATING,
            BatchStatus.IN_PROGRESS,
        ):
            return BatchStatus.CANCELLING
        return self.status


@attrs.frozen
class PendingLine:
    """A line whose task has not been harvested yet: its number, task, ``custom_id`` and the
    model it asked for (the answer's ``model`` when the provider names none)."""

    line: int
    task_id: str
    custom_id: str
    model: str


@attrs.frozen
class LineResult:
    """A line's entry of the output (``ok``) or the error file: one JSON object, no newline."""

    line: int
    ok: bool
    text: bytes
