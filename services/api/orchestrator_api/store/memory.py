"""``MemoryTaskStore``: records and event logs in process memory (single-process mode, tests).

Expiry follows the Redis store: ``ttl_seconds`` after the task ends, ``safety_ttl_seconds``
after creation while it has not; a cached answer ``ttl_seconds`` after its task succeeded.
Expired entries vanish on access and are swept on writes, so nothing accumulates; live
waiters sleep on a per-task event, never in a polling loop. Cache hits and joined tasks
follow ``_sharing``: a follower reads through its leader, which keeps only the list of their
ids, to expire (or fail) them when it ends; that is done ``FOLLOWER_BATCH`` at a time,
yielding to the event loop in between, so no call blocks it longer with more followers.

The per-tenant index of ``list_tasks`` is a dict per tenant, task id to creation time (or to
when it was requeued: ``requeue`` gives the task a new life, listed as of then), that
loses a task exactly when the task is dropped: about 100 bytes per task (a dict slot and a
float; the id string is the record's own), and an empty tenant's dict goes too. A page sorts
the tenant's live tasks, O(n log n) in the tenant's task count: fine for one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable

import attrs

from orchestrator_tasks.messages import ResultEvent

from ..model import Cancellation, StoredEvent, TaskPage, TaskRecord, TaskResult, TaskStatus
from ._sharing import (
    ORPHANED,
    cache_hit,
    cancelled,
    cancelled_data,
    cancelled_log,
    mirror,
    orphaned,
    partial_text,
    result_data,
    reused_events,
)
from ._steps import DONE_SEQ, QUEUED_DATA, Cursor, Step, step_for
from .errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    StoreUnavailable,
    TaskFinished,
    UnknownCursor,
)

__all__ = ["DEFAULT_PENDING_SECONDS", "DEFAULT_SAFETY_TTL", "MemoryTaskStore"]

#: Followers expired (or failed) between two yields to the event loop.
FOLLOWER_BATCH = 1000

#: How long a task that never ends is kept (a lost worker result, a task stuck in a backlog).
DEFAULT_SAFETY_TTL = 24 * 3600.0

#: How long a created task may stay unconfirmed (``TaskStore.confirm``) before it counts as
#: abandoned by its request. Far above what a submission may take (its store and broker
#: calls are each bounded by a couple of seconds).
DEFAULT_PENDING_SECONDS = 30.0


@attrs.define(eq=False)
class _Entry:
    record: TaskRecord
    idempotency_key: str | None
    expires_at: float
    log: list[StoredEvent] = attrs.field(factory=list)
    cursor: Cursor = attrs.field(factory=Cursor)
    changed: asyncio.Event = attrs.field(factory=asyncio.Event)
    cache_key: tuple[str, str] | None = None  # a leader's (tenant, key)
    followers: list[str] = attrs.field(factory=list)  # a leader's joined tasks
    pending_until: float | None = None  # set until confirmed published (TaskStore.create)
    fingerprint: str | None = None  # of the request that created it, with an idempotency key
    deltas: bool = True  # its text is published as it arrives (TaskStore.create)
    #: A leader cancelled while others follow it: how it shows to its own tenant, and how
    #: much of the log (shared with its followers, whose run goes on) is its own.
    cancelled: TaskRecord | None = None
    cut: int = 0
    cancelled_followers: int = 0  # of ``followers``: they follow no more

    def append(self, event: str, data: dict[str, object]) -> None:
        self.log.append(StoredEvent(id=str(len(self.log) + 1), event=event, data=data))

    def notify(self) -> None:
        # Waiters hold the event they saw before reading the log; replace it so each
        # notification wakes exactly those who may have missed something.
        self.changed.set()
        self.changed = asyncio.Event()


def _reused(stored: str | None, given: str | None) -> bool:
    """Whether a replay's fingerprint contradicts the one its key was first used with."""
    return stored is not None and given is not None and stored != given


def _abandoned(entry: _Entry, now: float) -> bool:
    """Created to be published, and still not confirmed ``pending_seconds`` later."""
    return entry.pending_until is not None and entry.pending_until <= now


def _after_index(after: str | None) -> int:
    """How many log entries ``after`` covers (ids are 1, 2, 3...; garbage means none)."""
    if after is None:
        return 0
    try:
        return max(int(after), 0)
    except ValueError:
        return 0


class MemoryTaskStore:
    """The TaskStore in memory; one event loop, no locking needed."""

    def __init__(
        self,
        ttl_seconds: float,
        *,
        safety_ttl_seconds: float = DEFAULT_SAFETY_TTL,
        pending_seconds: float = DEFAULT_PENDING_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        self.ttl_seconds = ttl_seconds
        self.pending_seconds = pending_seconds
        self.safety_ttl_seconds = max(safety_ttl_seconds, ttl_seconds)
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._expiries: list[tuple[float, str]] = []  # heap; stale items are skipped
        self._cache: dict[tuple[str, str], tuple[TaskResult, float]] = {}  # -> expires at
        self._cache_expiries: list[tuple[float, tuple[str, str]]] = []  # heap, like above
        self._leaders: dict[tuple[str, str], str] = {}  # (tenant, key) -> task id
        self._index: dict[str, dict[str, float]] = {}  # tenant -> task id -> list position
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryTaskStore(ttl_seconds={self.ttl_seconds!r}, tasks={len(self._entries)})"

    # -- expiry -------------------------------------------------------------------------

    def _expire_at(self, task_id: str, entry: _Entry, at: float) -> None:
        entry.expires_at = at
        heapq.heappush(self._expiries, (at, task_id))

    def _drop(self, task_id: str, entry: _Entry) -> None:
        del self._entries[task_id]
        tenant = entry.record.tenant
        listed = self._index.get(tenant)
        if listed is not None:
            listed.pop(task_id, None)
            if not listed:
                del self._index[tenant]
        key = entry.idempotency_key
        if key is not None and self._idempotency.get((entry.record.tenant, key)) == task_id:
            del self._idempotency[(entry.record.tenant, key)]
        self._release(task_id, entry)
        entry.notify()

    def _release(self, task_id: str, entry: _Entry) -> None:
        """End ``entry``'s leadership of its cache key (new submissions run again)."""
        if entry.cache_key is not None and self._leaders.get(entry.cache_key) == task_id:
            del self._leaders[entry.cache_key]

    def _sweep(self) -> None:
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            _, task_id = heapq.heappop(self._expiries)
            entry = self._entries.get(task_id)
            if entry is not None and entry.expires_at <= now:
                self._drop(task_id, entry)
        while self._cache_expiries and self._cache_expiries[0][0] <= now:
            _, key = heapq.heappop(self._cache_expiries)
            cached = self._cache.get(key)
            if cached is not None and cached[1] <= now:
                del self._cache[key]

    def _live(self, task_id: str) -> _Entry | None:
        entry = self._entries.get(task_id)
        if entry is not None and entry.expires_at <= self._clock():
            self._drop(task_id, entry)
            return None
        return entry

    def _owned(self, tenant: str, task_id: str) -> _Entry | None:
        entry = self._live(task_id)
        return entry if entry is not None and entry.record.tenant == tenant else None

    # -- TaskStore ----------------------------------------------------------------------

    async def create(
        self,
        record: TaskRecord,
        idempotency_key: str | None = None,
        cache_key: str | None = None,
        fingerprint: str | None = None,
        *,
        deltas: bool = True,
        follow: bool = False,  # nothing to prepare: reading the log costs nothing here
    ) -> TaskRecord:
        if record.status is not TaskStatus.QUEUED:
            raise ValueError(f"a new task must be queued, got {record.status}")
        self._sweep()
        tenant = record.tenant
        now = self._clock()
        if idempotency_key is not None:
            existing_id = self._idempotency.get((tenant, idempotency_key))
            if existing_id is not None:
                existing = self._live(existing_id)
                if existing is not None:
                    if _reused(existing.fingerprint, fingerprint):
                        raise IdempotencyKeyReused(
                            f"task {existing_id} of this idempotency key had another request"
                        )
                    if existing.pending_until is None:
                        return self._shown(existing)
                    if not _abandoned(existing, now):
                        raise IdempotencyKeyInUse(
                            f"task {existing_id} of this idempotency key is being submitted"
                        )
                    # Abandoned by its request: the key goes to this task (below).
        entry = _Entry(
            record, idempotency_key, expires_at=0.0, fingerprint=fingerprint, deltas=deltas
        )
        entry.append("status", dict(QUEUED_DATA))
        expires_at = now + self.safety_ttl_seconds
        if idempotency_key is not None or cache_key is not None:
            entry.pending_until = now + self.pending_seconds
        leader: _Entry | None = None  # set when the new task follows it
        if cache_key is not None:
            key = (tenant, cache_key)
            cached = self._cache.get(key)
            if cached is not None and cached[1] > now:
                entry.record = cache_hit(record, cached[0], record.created_at)
                entry.append("result", result_data(cached[0], 0) | {"cost_usd": 0.0})
                entry.pending_until = None  # never published
                expires_at = now + self.ttl_seconds
            else:
                leader_id = self._leaders.get(key)
                leader = self._live(leader_id) if leader_id is not None else None
                if leader is not None and leader.record.status.terminal:
                    leader = None
                # A submission that streams does not follow a leader without deltas.
                blind = leader is not None and deltas and not leader.deltas
                if leader is not None and leader.pending_until is None and not blind:
                    entry.record = attrs.evolve(record, joined=leader_id)
                    entry.pending_until = None  # never published
                    leader.followers.append(record.id)
                elif leader is None or blind or _abandoned(leader, now):
                    # No leader, one abandoned by its request, or one without deltas that
                    # this streaming task replaces (it runs on for its own followers).
                    leader = None
                    entry.cache_key = key
                    self._leaders[key] = record.id
                else:
                    leader = None  # the leader is not published yet: this task runs alone
        self._entries[record.id] = entry
        self._index.setdefault(tenant, {})[record.id] = record.created_at
        self._expire_at(record.id, entry, expires_at)
        if idempotency_key is not None:
            self._idempotency[(tenant, idempotency_key)] = record.id
        return entry.record if leader is None else mirror(entry.record, leader.record)

    def _source(self, entry: _Entry) -> _Entry | None:
        """Whose progress ``entry`` shows: its leader's while it follows one (None once the
        leader is gone), else its own."""
        leader_id = entry.record.joined
        if leader_id is None or entry.record.status.terminal:
            return entry
        return self._live(leader_id)

    def _shown(self, entry: _Entry) -> TaskRecord:
        source = self._source(entry)
        if source is entry or source is None:
            return entry.record
        return mirror(entry.record, source.record)

    async def discard(self, tenant: str, task_id: str) -> None:
        entry = self._owned(tenant, task_id)
        if entry is None:
            return
        self._drop(task_id, entry)
        # Its followers were told their task was accepted: they fail, rather than vanish.
        now = time.time()
        followers, entry.followers = entry.followers, []
        for start in range(0, len(followers), FOLLOWER_BATCH):
            if start:
                await asyncio.sleep(0)
            for follower_id in followers[start : start + FOLLOWER_BATCH]:
                follower = self._live(follower_id)
                if follower is None or follower.record.status.terminal:
                    continue
                follower.record = orphaned(follower.record, now)
                follower.append(
                    "error", {"type": ORPHANED.type, "message": ORPHANED.message, "attempt": 0}
                )
                self._expire_at(follower_id, follower, self._clock() + self.ttl_seconds)
                follower.notify()

    async def confirm(self, tenant: str, task_id: str) -> None:
        entry = self._owned(tenant, task_id)
        if entry is not None:
            entry.pending_until = None

    async def get(self, tenant: str, task_id: str) -> TaskRecord | None:
        entry = self._owned(tenant, task_id)
        if entry is None:
            return None
        if entry.cancelled is not None:
            return entry.cancelled
        source = self._source(entry)
        if source is None:
            return None
        return entry.record if source is entry else mirror(entry.record, source.record)

    async def cancel(self, tenant: str, task_id: str) -> Cancellation | None:
        if self._closed:
            raise StoreUnavailable("the task store is closed")
        self._sweep()
        entry = self._owned(tenant, task_id)
        shown = None if entry is None else await self.get(tenant, task_id)
        if entry is None or shown is None:
            return None
        if shown.status is TaskStatus.CANCELLED:
            return Cancellation(shown, stop_run=entry.cancelled is None and shown.joined is None)
        if shown.status.terminal:
            raise TaskFinished(shown)
        now = time.time()
        leader_id = entry.record.joined
        if leader_id is not None:  # a follower: alone, on a copy of what it has shown
            leader = self._live(leader_id)
            if leader is not None:
                leader.cancelled_followers += 1  # (counted: a list scan costs per follower)
                entry.log = list(leader.log)
            entry.record = cancelled(shown, now, partial_text(entry.log, shown.attempts))
            entry.append("cancelled", cancelled_data(entry.record))
            self._expire_at(task_id, entry, self._clock() + self.ttl_seconds)
            entry.notify()
            return Cancellation(entry.record, stop_run=False)
        self._release(task_id, entry)  # identical submissions run anew from now on
        if len(entry.followers) > entry.cancelled_followers:
            # Others follow its run: it ends cancelled alone, the run goes on for them.
            entry.cut = len(entry.log)
            entry.cancelled = cancelled(shown, now, partial_text(entry.log, shown.attempts))
            entry.notify()
            return Cancellation(entry.cancelled, stop_run=False)
        if shown.status is TaskStatus.QUEUED:
            entry.record = cancelled(shown, now, None)
            entry.append("cancelled", cancelled_data(entry.record))
            self._expire_at(task_id, entry, self._clock() + self.ttl_seconds)
            entry.notify()
            return Cancellation(entry.record, stop_run=True)
        return Cancellation(shown, stop_run=True)  # running: its worker ends it

    async def list_tasks(
        self,
        tenant: str,
        *,
        limit: int,
        after: str | None = None,
        status: TaskStatus | None = None,
    ) -> TaskPage:
        if self._closed:
            raise StoreUnavailable("the task store is closed")
        self._sweep()
        listed = self._index.get(tenant, {})
        if after is not None and after not in listed:
            raise UnknownCursor(f"{after!r} is not one of this tenant's tasks")
        order = sorted(listed.items(), key=lambda item: (item[1], item[0]), reverse=True)
        start = 0
        if after is not None:
            start = next(i for i, (task_id, _) in enumerate(order) if task_id == after) + 1
        found: list[TaskRecord] = []
        for task_id, _ in order[start:]:
            record = await self.get(tenant, task_id)
            if record is None or (status is not None and record.status is not status):
                continue
            if len(found) == limit:
                return TaskPage(tuple(found), has_more=True)
            found.append(record)
        return TaskPage(tuple(found), has_more=False)

    async def requeue(self, record: TaskRecord, attempts: int) -> int:
        if self._closed:
            raise StoreUnavailable("the task store is closed")
        self._sweep()
        entry = self._live(record.id)
        if entry is not None and entry.record.tenant != record.tenant:
            raise ValueError(f"task {record.id} is another tenant's")
        if entry is None:  # expired: recreated from what the task message tells
            fresh = TaskRecord(
                id=record.id,
                tenant=record.tenant,
                status=TaskStatus.QUEUED,
                created_at=record.created_at,
                model=record.model,
                trace_id=record.trace_id,
                priority=record.priority,
            )
            entry = _Entry(fresh, None, expires_at=0.0)
            entry.append("status", dict(QUEUED_DATA))
            self._entries[record.id] = entry
        attempts = max(attempts, entry.cursor.attempt, entry.record.attempts)
        done = Cursor(attempt=attempts, next_seq=DONE_SEQ)
        if entry.record.status is TaskStatus.QUEUED and entry.cursor == done:
            return attempts  # requeued already
        entry.record = attrs.evolve(
            entry.record,
            status=TaskStatus.QUEUED,
            attempts=attempts,
            started_at=None,
            finished_at=None,
            result=None,
            error=None,
        )
        entry.cursor = done
        entry.pending_until = None
        entry.append("status", {"status": TaskStatus.QUEUED.value, "attempt": attempts})
        self._expire_at(record.id, entry, self._clock() + self.safety_ttl_seconds)
        self._index.setdefault(record.tenant, {})[record.id] = time.time()
        entry.notify()
        return attempts

    async def apply(self, event: ResultEvent) -> bool:
        self._sweep()
        entry = self._live(event.task_id)
        if entry is None or entry.record.tenant != event.tenant or entry.record.status.terminal:
            return False
        ready = entry.cursor.admit(event)
        if ready is None:
            return False
        entry.pending_until = None  # a worker has it: it was published
        for admitted in ready:
            self._commit(event.task_id, entry, step_for(admitted))
        if ready:
            entry.notify()
        if entry.record.status.terminal and entry.followers:
            await self._release_followers(entry)
        return True

    async def _release_followers(self, entry: _Entry) -> None:
        """An ended leader's followers expire with it (they read through it)."""
        followers, entry.followers = entry.followers, []
        for start in range(0, len(followers), FOLLOWER_BATCH):
            if start:
                await asyncio.sleep(0)
            for follower_id in followers[start : start + FOLLOWER_BATCH]:
                follower = self._entries.get(follower_id)
                if follower is not None:
                    self._expire_at(follower_id, follower, entry.expires_at)

    def _commit(self, task_id: str, entry: _Entry, step: Step) -> None:
        record = entry.record
        started_at = record.started_at
        if started_at is None:  # the attempt's own start when the worker sent it
            started_at = step.started if step.started is not None else step.at
        attempts = max(record.attempts, step.attempt)
        if step.terminal:
            entry.record = attrs.evolve(
                record,
                status=step.status,
                attempts=attempts,
                started_at=started_at,
                finished_at=step.at,
                result=step.result,
                error=step.error,
                partial_text=step.partial_text,
            )
            expires_at = self._clock() + self.ttl_seconds
            self._expire_at(task_id, entry, expires_at)
            self._finish_leader(task_id, entry, step, expires_at)
        else:
            entry.record = attrs.evolve(
                record, status=step.status, attempts=attempts, started_at=started_at
            )
        entry.append(step.event, step.data)

    def _finish_leader(self, task_id: str, entry: _Entry, step: Step, expires_at: float) -> None:
        """A leader ended: cache its answer (success only) and release the key (``apply``
        then lets its followers expire with it)."""
        key = entry.cache_key
        if key is None:
            return
        self._release(task_id, entry)
        if step.result is not None:
            self._cache[key] = (step.result, expires_at)
            heapq.heappush(self._cache_expiries, (expires_at, key))

    async def events(
        self,
        tenant: str,
        task_id: str,
        after: str | None = None,
        timeout: float = 0.0,
        *,
        end_only: bool = False,  # reads cost nothing here: every change wakes the reader
    ) -> list[StoredEvent]:
        start = _after_index(after)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._closed:
                raise StoreUnavailable("the task store is closed")
            own = self._owned(tenant, task_id)
            if own is not None and own.cancelled is not None:
                return cancelled_log(own.log[: own.cut], own.cancelled)[start:]
            entry = None if own is None else self._source(own)
            if entry is None:
                return []
            if len(entry.log) > start:
                events = entry.log[start:]
                return events if entry is own else reused_events(events)
            remaining = deadline - loop.time()
            if remaining <= 0 or entry.record.status.terminal:
                return []
            changed = entry.changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
        for entry in self._entries.values():
            entry.notify()
