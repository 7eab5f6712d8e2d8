"""``BatchRunner``: turns batches into tasks, collects their answers, writes the files.

Every API process runs one. It looks at the active batches (``BatchStore.active_batches``)
and drives each one whose lease it gets, a step at a time: read a stretch of the input file
from the batch's cursor and submit its lines as tasks (``TaskService.submit``, the path of
``POST /v1/chat/completions``: validation, the prompt cache, joining, traces and costs);
collect the answers of pending lines whose tasks ended (``finish_lines``); when every line
has its answer, write the output and error files. Everything a step does is in the store,
so when a process stops (or loses the lease), another one resumes where it was: a line
submitted again gets its task back (its ``Idempotency-Key`` is the batch and line number).

A task record expires ``CACHE_TTL_MINUTES`` after it ends: its answer is collected well
before that while any API process runs; a line whose task is gone when collected (every API
process down for longer) goes to the error file as ``task_expired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import orjson
from opentelemetry import trace

from orchestrator_tasks import WorkerAdvert

from ..model import TaskRecord
from ..store.errors import IdempotencyKeyInUse, IdempotencyKeyReused, StoreError, TaskFinished
from ..tasks import TaskService, Unavailable
from ..validation import Submission
from ..workers import unserved_model
from .lines import InvalidLine, line_error, parse_line, task_line, with_batch_metadata
from .model import BatchRecord, BatchStatus, FileInfo, LineResult, PendingLine
from .protocol import BatchStore

__all__ = ["BATCH_PRIORITY", "MAX_BATCH_LINES", "BatchRunner", "new_file_id"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("orchestrator_api.batch")

#: The priority batch lines run at: a tenant's interactive tasks overtake its batches
#: (issue 12).
BATCH_PRIORITY: Final = "low"
#: Lines read and submitted per step; answers collected per look.
INGEST_LINES: Final = 256
HARVEST_LINES: Final = 512
#: Submissions (and answer reads) of one batch in flight at once: bounded, so a big batch
#: does not crowd out interactive requests on the same API process. Four keep the ingest
#: ahead of the workers (some 4,000 lines/s) while POST /v1/tasks stays fast beside it:
#: with 16, its p99 during a 50,000-line ingest was 51-61 ms, with 4, 39-41 ms
#: (tests/bench/README.md).
SUBMIT_CONCURRENCY: Final = 4
#: Lines per read of the results while writing the files.
WRITE_LINES: Final = 1000
#: Requests a batch may hold (OpenAI's limit): a longer input file fails the batch.
MAX_BATCH_LINES: Final = 50_000
#: Lines parsed (or answers turned into result lines) between two yields to the event
#: loop: parsing a line takes some 40 us, so a step never holds the loop for more than a
#: millisecond and interactive requests on the same process keep their latency.
YIELD_LINES: Final = 16
#: Batch-level errors kept in ``errors`` when validation fails (OpenAI lists each).
MAX_BATCH_ERRORS: Final = 100

Adverts = Callable[[], Awaitable[Sequence[WorkerAdvert]]]


def new_file_id() -> str:
    return f"file-{os.urandom(12).hex()}"


@attrs.define
class _Lines:
    """A stretch of input: each line (None: longer than allowed), where it ended, and
    whether the file did."""

    lines: list[bytes | None]
    cursor: int
    eof: bool


async def _lines(
    chunks: AsyncGenerator[bytes, None], max_line_bytes: int
) -> AsyncGenerator[tuple[int, bytes | None], None]:
    """Each line of the file (blank ones too) with the offset just past it, from where
    ``chunks`` start; None for a line longer than ``max_line_bytes`` (its bytes are dropped,
    never held). The one way the validation pass and the ingest split a file."""
    offset = 0  # bytes before ``buffer``
    buffer = bytearray()
    skipping = False  # inside a line that is too long: drop its bytes until its newline
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                offset += end + 1
                if skipping:
                    skipping = False
                    yield offset, None
                else:
                    yield offset, None if len(line) > max_line_bytes else line
            if len(buffer) > max_line_bytes:
                offset += len(buffer)
                buffer.clear()
                skipping = True
    if skipping or buffer:
        offset += len(buffer)
        yield offset, None if skipping or len(buffer) > max_line_bytes else bytes(buffer)


async def _read_lines(
    chunks: AsyncGenerator[bytes, None], start: int, max_lines: int, max_line_bytes: int
) -> _Lines:
    """Up to ``max_lines`` non-blank lines from ``start``, and the offset to go on from."""
    out: list[bytes | None] = []
    cursor = start
    async with contextlib.aclosing(_lines(chunks, max_line_bytes)) as lines:
        async for end, line in lines:
            cursor = start + end
            if line is None or line.strip():
                out.append(line)
                if len(out) >= max_lines:
                    return _Lines(out, cursor, eof=False)
    return _Lines(out, cursor, eof=True)


async def _split_lines(
    chunks: AsyncGenerator[bytes, None], max_line_bytes: int
) -> AsyncGenerator[tuple[int, bytes | None], None]:
    """Each line of the file with its 1-based line number; None for a line longer than
    ``max_line_bytes`` (its bytes are dropped, never held)."""
    async with contextlib.aclosing(_lines(chunks, max_line_bytes)) as lines:
        number = 0
        async for _, line in lines:
            number += 1
            yield number, line


def _custom_id(raw: bytes) -> str | None:
    """A line's ``custom_id`` if it has a usable one (the ingest reports the lines that do
    not, each in the error file)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    custom_id = data.get("custom_id") if isinstance(data, dict) else None
    return custom_id if isinstance(custom_id, str) and custom_id else None


class BatchRunner:
    """Drives the active batches whose lease this process holds (see the module)."""

    def __init__(
        self,
        store: BatchStore,
        tasks: TaskService,
        *,
        file_ttl_seconds: float,
        max_prompt_chars: int,
        max_line_bytes: int,
        adverts: Adverts | None = None,
        interval: float = 1.0,
        lease_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.file_ttl_seconds = file_ttl_seconds
        self.max_prompt_chars = max_prompt_chars
        self.max_line_bytes = max_line_bytes
        self.interval = interval
        self.lease_seconds = lease_seconds
        self._adverts = adverts
        self._owner = os.urandom(8).hex()
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    def kick(self) -> None:
        """Look at the active batches now (a batch was created or cancelled)."""
        self._wake.set()

    async def run(self) -> None:
        """Until ``stop``: every ``interval`` (or when kicked), drive each active batch this
        process can lease and is not driving yet."""
        while not self._stopping:
            self._wake.clear()
            try:
                for batch_id in await self.store.active_batches():
                    if batch_id in self._driving:
                        continue
                    if await self.store.acquire(batch_id, self._owner, self.lease_seconds):
                        task = asyncio.create_task(self._drive(batch_id), name=f"batch-{batch_id}")
                        self._driving[batch_id] = task
                        task.add_done_callback(functools.partial(self._driven, batch_id))
            except StoreError as exc:
                log.warning("batches: the store is unavailable: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    def _driven(self, batch_id: str, _: asyncio.Task[None]) -> None:
        self._driving.pop(batch_id, None)

    async def stop(self) -> None:
        """Stop driving; the leases are given up, so another process resumes at once."""
        self._stopping = True
        self._wake.set()
        running = list(self._driving.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _drive(self, batch_id: str) -> None:
        try:
            while not self._stopping:
                record = await self.store.load(batch_id)
                if record is None or record.status.terminal:
                    await self.store.retire(batch_id)
                    return
                if not await self._step(record):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval):
                            await self._wake.wait()
                if not await self.store.acquire(batch_id, self._owner, self.lease_seconds):
                    return  # another process took it over (this one stalled)
        except (StoreError, Unavailable) as exc:
            log.warning("batch %s: paused, the store or broker is unavailable: %s", batch_id, exc)
        except Exception:
            log.exception("batch %s: step failed; it will be resumed", batch_id)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(batch_id, self._owner))

    # ---- one step -------------------------------------------------------------------------

    async def _step(self, record: BatchRecord) -> bool:
        """One step of the batch; whether it did anything."""
        stopping = self._stopping_as(record)
        if stopping is not None and not record.stopped:
            await self._stop_tasks(record)
            record = attrs.evolve(record, stopped=True)
            await self.store.save(record)
        if record.status is BatchStatus.VALIDATING and stopping is None:
            await self._validate(record)
            return True
        if not record.ingested:
            await self._ingest(record, stopping)
            await self._harvest(record, stopping)  # while a big batch is read, answers arrive
            return True
        if await self._harvest(record, stopping):
            return True
        if not await self.store.pending(record.id, 1):
            await self._finalize(record, stopping)
            return True
        return False

    @staticmethod
    def _stopping_as(record: BatchRecord) -> str | None:
        if record.cancelling_at is not None:
            return "batch_cancelled"
        if time.time() >= record.expires_at:
            return "batch_expired"
        return None

    async def _stop_tasks(self, record: BatchRecord) -> None:
        """Cancel the tasks of every pending line (their answers, if any, are collected
        as usual)."""
        semaphore = asyncio.Semaphore(SUBMIT_CONCURRENCY)

        async def cancel(line: PendingLine) -> None:
            async with semaphore:
                with contextlib.suppress(TaskFinished):
                    await self.tasks.cancel(record.tenant, line.task_id)

        pending = await self.store.pending(record.id, max(record.lines, 1))
        await asyncio.gather(*(cancel(line) for line in pending))

    async def _validate(self, record: BatchRecord) -> None:
        """Read the whole input once before any line runs, as OpenAI does: a batch with a
        ``custom_id`` on two lines, or with more than ``MAX_BATCH_LINES`` requests, fails
        here (``errors`` names the lines) and runs nothing. Memory is a 16-byte digest per
        line; a process that stops midway leaves the batch ``validating``, and the next one
        validates it again from the start."""
        info = await self.store.get_file(record.tenant, record.input_file_id)
        if info is None:
            await self._fail(record, "invalid_file", "The input file was deleted or expired.")
            return
        first_seen: dict[bytes, int] = {}
        errors: list[dict[str, Any]] = []
        requests = 0
        lines = _split_lines(self.store.read_file(record.input_file_id, 0), self.max_line_bytes)
        async for number, raw in lines:
            if raw is not None and not raw.strip():
                continue
            requests += 1
            if requests > MAX_BATCH_LINES:
                message = f"The input file has more than {MAX_BATCH_LINES} requests."
                await self._fail(record, "too_many_requests", message)
                await lines.aclose()
                return
            if requests % YIELD_LINES == 0:
                await asyncio.sleep(0)  # a big file never holds the event loop
            custom_id = _custom_id(raw) if raw is not None else None
            if custom_id is None:
                continue
            digest = hashlib.blake2b(custom_id.encode(), digest_size=16).digest()
            seen = first_seen.setdefault(digest, number)
            if seen != number and len(errors) < MAX_BATCH_ERRORS:
                errors.append(
                    {
                        "code": "duplicate_custom_id",
                        "message": f"custom_id {custom_id!r} is also on line {seen}: each "
                        "request's custom_id must be unique in the batch.",
                        "line": number,
                        "param": "custom_id",
                    }
                )
        if errors:
            await self._fail_with(record, tuple(errors))
            return
        now = time.time()
        await self.store.save(
            attrs.evolve(record, status=BatchStatus.IN_PROGRESS, in_progress_at=now)
        )

    async def _ingest(self, record: BatchRecord, stopping: str | None) -> None:
        info = await self.store.get_file(record.tenant, record.input_file_id)
        if info is None:
            if record.lines == 0:
                await self._fail(record, "invalid_file", "The input file was deleted or expired.")
            else:  # deleted meanwhile: what was read is the batch
                await self.store.save(attrs.evolve(record, ingested=True))
            return
        read = await _read_lines(
            self.store.read_file(record.input_file_id, record.cursor),
            record.cursor,
            INGEST_LINES,
            self.max_line_bytes,
        )
        adverts = await self._adverts() if self._adverts is not None and stopping is None else ()
        done: list[LineResult] = []
        jobs: list[tuple[int, str, Submission]] = []
        number = record.lines
        for index, raw in enumerate(read.lines, start=1):
            if index % YIELD_LINES == 0:
                await asyncio.sleep(0)
            try:
                if raw is None:
                    message = f"The line is longer than {self.max_line_bytes} bytes."
                    raise InvalidLine(message, "line_too_long")
                custom_id, submission = parse_line(raw, max_prompt_chars=self.max_prompt_chars)
                if stopping is not None:
                    message = "The batch stopped before this request was sent."
                    raise InvalidLine(message, stopping, custom_id)
                reason = unserved_model(adverts, submission.model)
                if reason is not None:
                    raise InvalidLine(f"body: model: {reason}", "model_not_found", custom_id)
                jobs.append((number, custom_id, submission))
            except InvalidLine as exc:
                done.append(line_error(record.id, number, exc))
            number += 1
        pending = await self._submit_all(record, jobs, done)
        await self.store.add_lines(record.id, read.cursor, number, pending, done)
        if read.eof and number == 0:
            await self._fail(record, "empty_file", "The input file has no requests.")
            return
        now = time.time()
        changed = attrs.evolve(
            record,
            ingested=read.eof,
            status=BatchStatus.IN_PROGRESS,
            in_progress_at=record.in_progress_at or now,
        )
        if changed != record:
            await self.store.save(changed)

    async def _submit_all(
        self,
        record: BatchRecord,
        jobs: list[tuple[int, str, Submission]],
        done: list[LineResult],
    ) -> list[PendingLine]:
        semaphore = asyncio.Semaphore(SUBMIT_CONCURRENCY)

        async def submit(number: int, custom_id: str, submission: Submission) -> PendingLine | None:
            async with semaphore:
                key = f"{record.id}:{number}"
                attributes: dict[str, str | int] = {"batch.id": record.id, "batch.line": number}
                with _tracer.start_as_current_span("batch line", attributes=attributes):
                    try:
                        task = await self._submit(
                            record.tenant,
                            with_batch_metadata(submission, record.id, custom_id),
                            key,
                        )
                    except IdempotencyKeyReused:
                        changed = InvalidLine("The line changed since it was read.", "conflict")
                        done.append(line_error(record.id, number, changed))
                        return None
            return PendingLine(number, task.id, custom_id, submission.model or "default")

        results = await asyncio.gather(*(submit(*job) for job in jobs))
        return [line for line in results if line is not None]

    async def _submit(self, tenant: str, submission: Submission, key: str) -> TaskRecord:
        """A line's task (its own again when submitted before: ``key``), at ``low``
        priority whatever the line asked: the tenant's interactive tasks overtake its batch;
        without deltas, as nobody streams it. Unavailable and IdempotencyKeyInUse end the
        step: the stretch is read and submitted again later."""
        submission = attrs.evolve(submission, priority=BATCH_PRIORITY, deltas=False)
        try:
            record, _ = await self.tasks.submit(tenant, submission, key)
        except IdempotencyKeyInUse as exc:
            raise Unavailable("task store") from exc
        return record

    async def _harvest(self, record: BatchRecord, stopping: str | None) -> int:
        """Collect the answers of pending lines whose tasks ended; how many."""
        collected = 0
        semaphore = asyncio.Semaphore(SUBMIT_CONCURRENCY)

        async def get(line: PendingLine) -> TaskRecord | None:
            async with semaphore:
                return await self.tasks.get(record.tenant, line.task_id)

        while True:
            lines = await self.store.pending(record.id, HARVEST_LINES)
            if not lines:
                return collected
            tasks = await asyncio.gather(*(get(line) for line in lines))
            results: list[LineResult] = []
            for index, (line, task) in enumerate(zip(lines, tasks, strict=True), start=1):
                if index % YIELD_LINES == 0:
                    await asyncio.sleep(0)
                if task is None or task.status.terminal:
                    results.append(task_line(line, task, stopping or "task_cancelled"))
            if results:
                await self.store.finish_lines(record.id, results)
            collected += len(results)
            if len(lines) < HARVEST_LINES or len(results) < len(lines) // 2:
                return collected

    # ---- the end --------------------------------------------------------------------------

    async def _fail(self, record: BatchRecord, code: str, message: str) -> None:
        error = {"code": code, "message": message, "line": None, "param": "input_file_id"}
        await self._fail_with(record, (error,))

    async def _fail_with(self, record: BatchRecord, errors: tuple[dict[str, Any], ...]) -> None:
        now = time.time()
        await self.store.save(
            attrs.evolve(
                record, status=BatchStatus.FAILED, failed_at=now, errors=errors, ingested=True
            )
        )
        await self.store.retire(record.id)

    async def _finalize(self, record: BatchRecord, stopping: str | None) -> None:
        now = time.time()
        if record.status is not BatchStatus.FINALIZING:
            record = attrs.evolve(record, status=BatchStatus.FINALIZING, finalizing_at=now)
            await self.store.save(record)
        fresh = await self.store.load(record.id)
        counts = fresh or record
        output = await self._write(record, ok=True) if counts.completed else None
        lines = counts.lines
        errors = await self._write(record, ok=False) if counts.completed < lines else None
        now = time.time()
        ends = {
            "batch_cancelled": {"status": BatchStatus.CANCELLED, "cancelled_at": now},
            "batch_expired": {"status": BatchStatus.EXPIRED, "expired_at": now},
        }
        end = ends.get(stopping or "", {"status": BatchStatus.COMPLETED, "completed_at": now})
        await self.store.save(
            attrs.evolve(
                record,
                output_file_id=output.id if output else None,
                error_file_id=errors.id if errors else None,
                **end,  # type: ignore[arg-type]
            )
        )
        await self.store.retire(record.id)

    async def _write(self, record: BatchRecord, *, ok: bool) -> FileInfo | None:
        """The output (``ok``) or error file, streamed into the store; None when empty."""
        lines = (await self.store.load(record.id) or record).lines

        async def chunks() -> AsyncIterator[bytes]:
            for first in range(0, lines, WRITE_LINES):
                results = await self.store.line_results(
                    record.id, first, min(WRITE_LINES, lines - first)
                )
                out = bytearray()
                for number, result in enumerate(results, start=first):
                    if result is None:
                        if not ok:  # never lost: each line is in one of the two files
                            lost = InvalidLine("The line's result was lost.", "line_lost")
                            out += line_error(record.id, number, lost).text + b"\n"
                    elif result.ok is ok:
                        out += result.text + b"\n"
                if out:
                    yield bytes(out)

        now = time.time()
        info = FileInfo(
            id=new_file_id(),
            tenant=record.tenant,
            filename=f"{record.id}_{'output' if ok else 'error'}.jsonl",
            purpose="batch_output",
            bytes=0,
            created_at=now,
            expires_at=now + self.file_ttl_seconds,
        )
        stored = await self.store.put_file(info, chunks())
        if stored.bytes == 0:
            await self.store.delete_file(record.tenant, stored.id)
            return None
        return stored
