"""The TaskStore protocol: task records and event logs, owned by the API.

Two implementations: ``MemoryTaskStore`` (single-process mode, tests) and ``RedisTaskStore``
(keys expire ``CACHE_TTL_MINUTES`` after the task ends; so do cached answers). Every method
may raise ``StoreUnavailable`` (a ``StoreError``) when the backend cannot be reached.

Each tenant's tasks are also kept in a per-tenant index, ordered by creation, so that
``list_tasks`` can page through them; an entry lives no longer than its task could (see the
stores for how it is pruned and what it costs).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from orchestrator_tasks.messages import ResultEvent

from ..model import Cancellation, StoredEvent, TaskPage, TaskRecord, TaskStatus


@runtime_checkable
class TaskStore(Protocol):
    async def create(
        self,
        record: TaskRecord,
        idempotency_key: str | None = None,
        cache_key: str | None = None,
        fingerprint: str | None = None,
        *,
        deltas: bool = True,
        follow: bool = False,
    ) -> TaskRecord:
        """Store a new queued task and return it as stored; with an idempotency key already
        used by the same tenant, store nothing and return the existing record instead
        (compare ``.id``). The key expires with the record. With a ``fingerprint`` (a digest
        of the request) kept with the key, a replay whose fingerprint differs raises
        ``IdempotencyKeyReused`` instead (a record stored without one matches any).

        With a ``cache_key`` (a digest of what the task asks, never the prompt itself;
        looked up within ``record.tenant`` only) the task may instead be stored as a cache
        hit (returned ``succeeded`` and ``cached``), or as a follower of the identical task
        in flight (returned with ``joined`` set, showing that task's progress), see
        ``_sharing``; neither is to be published. Otherwise it leads the key until it ends.
        The idempotency key is checked first. ``record.status`` must be ``queued``
        (ValueError).

        A task to be published is stored *pending* until ``confirm``: it is not joined (an
        identical task runs on its own meanwhile), and a replay of its idempotency key
        raises ``IdempotencyKeyInUse`` (nothing stored). A task still pending
        ``pending_seconds`` after its creation was abandoned by its request (the publish
        failed and so did the discard, or the process died): its idempotency key and its
        lead of the cache key are then taken over by the next submission.

        ``deltas`` False: the task's worker publishes no text before its end (nobody streams
        it: ``TaskMessage.deltas``). Such a task joins like any other, but a submission
        that streams does not follow it (its client would see no text until the end): it
        leads the key in its place, and the earlier leader runs on for its own followers.

        ``follow``: the caller is about to follow the task from its start (``events`` after
        its queued status, waiting), so a store may get ready for that while it stores:
        the Redis store subscribes to the task's wake-ups alongside the write, and that
        first call then waits without reading the log.
        """
        ...

    async def confirm(self, tenant: str, task_id: str) -> None:
        """The task created by ``create`` is published: it stops being pending (see
        ``create``). Any applied result event confirms it too, so a lost confirm only
        delays joining."""
        ...

    async def discard(self, tenant: str, task_id: str) -> None:
        """Remove a record whose publish failed (and its idempotency key, and its lead of a
        cache key), so no record is left stuck at ``queued`` for a task that was never
        accepted. Tasks that joined it in the meantime fail (``_sharing.ORPHANED``), a
        bounded batch at a time, before the call returns."""
        ...

    async def get(self, tenant: str, task_id: str) -> TaskRecord | None:
        """The record, or None when unknown, expired, or another tenant's."""
        ...

    async def cancel(self, tenant: str, task_id: str) -> Cancellation | None:
        """Cancel the tenant's task (None: unknown, expired, or another tenant's; raises
        ``TaskFinished`` for one that succeeded or failed, changing nothing).

        - A queued task is ``cancelled`` at once (``finished_at`` now, ``started_at`` null,
          a ``cancelled`` event in its log); its run is to be stopped (``stop_run``): the
          worker that takes it up never calls a provider.
        - A running one stays ``running``, its run to be stopped: the worker's ``cancelled``
          event ends it (with its ``partial_text``).
        - A task that followed another (``joined``) is ``cancelled`` at once, alone: the one
          it followed runs on (``stop_run`` False). So does a task that others follow: it
          ends ``cancelled`` (with the text so far as ``partial_text``) while its run goes on
          for its followers.
        - A cancelled one is returned as it is (``stop_run`` again where it was: telling
          the workers twice is harmless).

        A cancelled task leads no cache key any more: identical submissions run anew.
        """
        ...

    async def list_tasks(
        self,
        tenant: str,
        *,
        limit: int,
        after: str | None = None,
        status: TaskStatus | None = None,
    ) -> TaskPage:
        """Up to ``limit`` of ``tenant``'s tasks within their TTL, newest first (by creation;
        ties by id), each as ``get`` shows it; only those whose (shown) status is ``status``,
        when given. With ``after``, those that come after that task in this order: it must
        be one of the tenant's listed tasks, else ``UnknownCursor``. Another tenant's tasks
        are never listed.
        """
        ...

    async def requeue(self, record: TaskRecord, attempts: int) -> int:
        """Put the task ``record.id`` back to ``queued``: a dead letter of it is replayed
        (``ai-orchestrator dead-letters replay``) and will run again under its own id.

        Its result, error and times are cleared and its attempt count kept (``attempts``, or
        the record's own if it counted more); events of those attempts are ignored from now
        on, so the replay's first attempt (the count + 1) takes over. A ``status`` event
        (``queued``, that count as ``attempt``) goes into its log and wakes its followers;
        it expires like a new task (``safety_ttl_seconds`` from now) and is listed as of
        now. A task that has expired is recreated from ``record`` (what the task message
        tells: no metadata). Returns the attempt count: publish the replay with it as
        ``prior_attempts``. Calling it again with the same count changes nothing. Raises
        ``ValueError`` when the id is another tenant's task (nothing changes).
        """
        ...

    async def apply(self, event: ResultEvent) -> bool:
        """Apply one result event to the record and append it to the event log.

        Idempotent: an event already applied (same task, attempt, seq), an event of an older
        attempt than the newest seen, or anything after the terminal event is ignored and
        returns False. The terminal result is written once. Sets the TTL once terminal.

        Order-safe: a non-terminal event whose predecessor (seq - 1) has not arrived yet is
        held back and returns True; it is appended once the gap fills, so the log is in seq
        order. A terminal event is applied at once even across a gap (its result carries the
        whole answer) and the held-back events are dropped. The first event of a newer
        attempt switches to it. Events of unknown tasks (or naming another tenant) return
        False.

        A leader's terminal event also lets its followers expire with it (``_sharing``), a
        bounded batch at a time, before the call returns: however many joined it, no single
        step takes longer. If that was cut short (the process died), a redelivery of the
        terminal event finishes it, and returns True once more.
        """
        ...

    async def events(
        self,
        tenant: str,
        task_id: str,
        after: str | None = None,
        timeout: float = 0.0,
        *,
        end_only: bool = False,
    ) -> list[StoredEvent]:
        """Event log entries after ``after`` (all when None). With ``timeout`` > 0 and none
        available yet, wait up to that long for new ones (live streaming). With
        ``end_only``, that wait is for the task's end: new deltas need not end it (a store
        may still return them early), so a caller that wants only the terminal event
        (a non-streamed answer) is not woken to read each one; and a store may then return
        the terminal entry alone, without those between.

        Ids are decimal strings 1, 2, 3...; an ``after`` that is not one replays from the
        start. Returns at once, empty, for an unknown task (or another tenant's) and for a
        finished task with nothing after ``after``: there is nothing to wait for.
        """
        ...

    async def ping(self) -> None:
        """Raise if the store's backend is unreachable."""
        ...

    async def close(self) -> None:
        """Release connections and wake every waiting reader; idempotent."""
        ...
