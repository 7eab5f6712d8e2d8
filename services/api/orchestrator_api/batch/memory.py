"""``MemoryBatchStore``: files and batches in this process (single-process mode, tests)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from typing import TypeVar

import attrs

from .model import CHUNK_BYTES, BatchRecord, FileInfo, LineResult, PendingLine

__all__ = ["MemoryBatchStore", "page_after"]

T = TypeVar("T")

_RUNNER_FIELDS = ("lines", "completed", "failed", "cursor", "cancelling_at")


def page_after(items: list[T], key: str | None, ident: str, limit: int) -> tuple[list[T], bool]:
    """The page of ``items`` (in listing order) after the one whose ``ident`` is ``key``."""
    start = 0
    if key is not None:
        ids = [getattr(item, ident) for item in items]
        start = ids.index(key) + 1 if key in ids else len(items)
    page = items[start : start + limit]
    return page, start + limit < len(items)


class MemoryBatchStore:
    """The BatchStore in this process's memory: nothing survives a restart."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[FileInfo, bytes]] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._pending: dict[str, dict[int, PendingLine]] = {}
        self._results: dict[str, dict[int, LineResult]] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    # ---- files ----------------------------------------------------------------------------

    async def put_file(self, info: FileInfo, chunks: AsyncIterable[bytes]) -> FileInfo:
        parts = [chunk async for chunk in chunks]
        data = b"".join(parts)
        stored = attrs.evolve(info, bytes=len(data))
        self._files[info.id] = (stored, data)
        return stored

    def _live_file(self, file_id: str) -> tuple[FileInfo, bytes] | None:
        entry = self._files.get(file_id)
        if entry is not None and entry[0].expires_at <= time.time():
            del self._files[file_id]
            return None
        return entry

    async def get_file(self, tenant: str, file_id: str) -> FileInfo | None:
        entry = self._live_file(file_id)
        return entry[0] if entry is not None and entry[0].tenant == tenant else None

    async def list_files(
        self, tenant: str, *, limit: int, after: str | None, purpose: str | None, ascending: bool
    ) -> tuple[list[FileInfo], bool]:
        infos = [
            entry[0]
            for file_id in list(self._files)
            if (entry := self._live_file(file_id)) is not None
            and entry[0].tenant == tenant
            and (purpose is None or entry[0].purpose == purpose)
        ]
        infos.sort(key=lambda info: (info.created_at, info.id), reverse=not ascending)
        return page_after(infos, after, "id", limit)

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        if await self.get_file(tenant, file_id) is None:
            return False
        del self._files[file_id]
        return True

    async def read_file(self, file_id: str, start: int = 0) -> AsyncGenerator[bytes, None]:
        entry = self._live_file(file_id)
        if entry is None:
            return
        data = entry[1]
        for offset in range(start, len(data), CHUNK_BYTES):
            yield data[offset : offset + CHUNK_BYTES]

    # ---- batches --------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord) -> None:
        self._batches[record.id] = record
        self._pending[record.id] = {}
        self._results[record.id] = {}

    async def get_batch(self, tenant: str, batch_id: str) -> BatchRecord | None:
        record = self._batches.get(batch_id)
        return record if record is not None and record.tenant == tenant else None

    async def list_batches(
        self, tenant: str, *, limit: int, after: str | None
    ) -> tuple[list[BatchRecord], bool]:
        records = [r for r in self._batches.values() if r.tenant == tenant]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return page_after(records, after, "id", limit)

    async def request_cancel(self, tenant: str, batch_id: str, now: float) -> BatchRecord | None:
        record = await self.get_batch(tenant, batch_id)
        if record is None:
            return None
        if record.cancelling_at is None:
            record = self._batches[batch_id] = attrs.evolve(record, cancelling_at=now)
        return record

    async def active_batches(self) -> list[str]:
        return [batch_id for batch_id in self._pending if batch_id in self._batches]

    async def load(self, batch_id: str) -> BatchRecord | None:
        return self._batches.get(batch_id)

    async def acquire(self, batch_id: str, owner: str, seconds: float) -> bool:
        now = time.monotonic()
        held = self._leases.get(batch_id)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[batch_id] = (owner, now + seconds)
        return True

    async def release(self, batch_id: str, owner: str) -> None:
        held = self._leases.get(batch_id)
        if held is not None and held[0] == owner:
            del self._leases[batch_id]

    async def save(self, record: BatchRecord) -> None:
        current = self._batches.get(record.id)
        if current is None:
            return
        kept = {name: getattr(current, name) for name in _RUNNER_FIELDS}
        self._batches[record.id] = attrs.evolve(record, **kept)

    async def add_lines(
        self,
        batch_id: str,
        cursor: int,
        lines: int,
        pending: Sequence[PendingLine],
        done: Sequence[LineResult],
    ) -> None:
        record = self._batches.get(batch_id)
        waiting, results = self._pending.get(batch_id), self._results.get(batch_id)
        if record is None or waiting is None or results is None:
            return
        for line in pending:
            if line.line not in results:
                waiting[line.line] = line
        completed, failed = self._count(results, done)
        self._batches[batch_id] = attrs.evolve(
            record,
            cursor=max(cursor, record.cursor),
            lines=max(lines, record.lines),
            completed=record.completed + completed,
            failed=record.failed + failed,
        )

    @staticmethod
    def _count(results: dict[int, LineResult], done: Sequence[LineResult]) -> tuple[int, int]:
        completed = failed = 0
        for result in done:
            if result.line in results:
                continue
            results[result.line] = result
            completed += result.ok
            failed += not result.ok
        return completed, failed

    async def pending(self, batch_id: str, limit: int) -> list[PendingLine]:
        waiting = self._pending.get(batch_id, {})
        return [waiting[line] for line in sorted(waiting)[:limit]]

    async def finish_lines(self, batch_id: str, results: Sequence[LineResult]) -> None:
        record = self._batches.get(batch_id)
        waiting, kept = self._pending.get(batch_id), self._results.get(batch_id)
        if record is None or waiting is None or kept is None:
            return
        for result in results:
            waiting.pop(result.line, None)
        completed, failed = self._count(kept, results)
        self._batches[batch_id] = attrs.evolve(
            record, completed=record.completed + completed, failed=record.failed + failed
        )

    async def line_results(self, batch_id: str, first: int, count: int) -> list[LineResult | None]:
        results = self._results.get(batch_id, {})
        return [results.get(line) for line in range(first, first + count)]

    async def retire(self, batch_id: str) -> None:
        self._pending.pop(batch_id, None)
        self._results.pop(batch_id, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
