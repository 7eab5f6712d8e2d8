"""The BatchStore protocol: uploaded and produced files, batches, and each batch's lines.

Two implementations: ``MemoryBatchStore`` (single-process mode, tests) and
``RedisBatchStore`` (files in ``CHUNK_BYTES`` chunks, everything shared by the API replicas).
Every method may raise ``StoreUnavailable`` when the backend cannot be reached.

A batch's progress lives here, not in any process: which lines are pending (and their
tasks), each finished line's output entry, and the counters, changed together atomically, so
whichever replica holds a batch's lease (``acquire``) can take over where another stopped.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from typing import Protocol, runtime_checkable

from .model import BatchRecord, FileInfo, LineResult, PendingLine


@runtime_checkable
class BatchStore(Protocol):
    # ---- files ----------------------------------------------------------------------------

    async def put_file(self, info: FileInfo, chunks: AsyncIterable[bytes]) -> FileInfo:
        """Store the bytes of ``chunks`` as file ``info.id`` and return it with its size.

        The file is listed and readable only once every chunk is in; if ``chunks`` raises,
        nothing is kept and the exception propagates. Expires at ``info.expires_at``.
        """
        ...

    async def get_file(self, tenant: str, file_id: str) -> FileInfo | None:
        """The tenant's file, or None (unknown, expired, deleted, another tenant's)."""
        ...

    async def list_files(
        self, tenant: str, *, limit: int, after: str | None, purpose: str | None, ascending: bool
    ) -> tuple[list[FileInfo], bool]:
        """Up to ``limit`` of the tenant's files by creation (newest first unless
        ``ascending``), after file ``after`` when given; and whether more follow."""
        ...

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        """Delete the tenant's file; False when there was none."""
        ...

    def read_file(self, file_id: str, start: int = 0) -> AsyncGenerator[bytes, None]:
        """The file's bytes from offset ``start``, a chunk at a time (empty when gone)."""
        ...

    # ---- batches --------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord) -> None:
        """Store a new batch and make it active (``active_batches``)."""
        ...

    async def get_batch(self, tenant: str, batch_id: str) -> BatchRecord | None:
        """The tenant's batch, or None."""
        ...

    async def list_batches(
        self, tenant: str, *, limit: int, after: str | None
    ) -> tuple[list[BatchRecord], bool]:
        """Up to ``limit`` of the tenant's batches, newest first, after batch ``after``."""
        ...

    async def request_cancel(self, tenant: str, batch_id: str, now: float) -> BatchRecord | None:
        """Ask the batch's runner to cancel it (``cancelling_at`` = ``now``, kept if set);
        the batch as it now stands, or None."""
        ...

    async def active_batches(self) -> list[str]:
        """The ids of batches that are not finished yet (their runner has work to do)."""
        ...

    async def load(self, batch_id: str) -> BatchRecord | None:
        """Any tenant's batch (for its runner)."""
        ...

    async def acquire(self, batch_id: str, owner: str, seconds: float) -> bool:
        """Take or renew the batch's lease for ``seconds``; False when another owner holds it."""
        ...

    async def release(self, batch_id: str, owner: str) -> None:
        """Give the lease up, if ``owner`` holds it."""
        ...

    async def save(self, record: BatchRecord) -> None:
        """Write the runner's fields of ``record`` (not the counters, not ``cancelling_at``)."""
        ...

    async def add_lines(
        self,
        batch_id: str,
        cursor: int,
        lines: int,
        pending: Sequence[PendingLine],
        done: Sequence[LineResult],
    ) -> None:
        """Record a stretch of input read up to byte ``cursor`` and line count ``lines``: its
        lines with tasks (``pending``) and those that already have their result (``done``,
        counted ``failed``/``completed``), all at once. A line that has a result already is
        left as it is, so a stretch read again after a crash is recorded once."""
        ...

    async def pending(self, batch_id: str, limit: int) -> list[PendingLine]:
        """Up to ``limit`` of the batch's pending lines, lowest line number first."""
        ...

    async def finish_lines(self, batch_id: str, results: Sequence[LineResult]) -> None:
        """Give pending lines their results (and count them), at once; a line that has one
        already keeps it."""
        ...

    async def line_results(self, batch_id: str, first: int, count: int) -> list[LineResult | None]:
        """The results of lines ``first`` .. ``first + count - 1`` (None: no result)."""
        ...

    async def retire(self, batch_id: str) -> None:
        """The batch is finished: drop its lines and take it off the active set (its
        record stays until it expires)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
