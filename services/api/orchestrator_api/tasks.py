"""Accepting tasks: record first, publish second, and never report a task not published."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from typing import Any, Final

import attrs
import orjson

from orchestrator_broker import Broker, BrokerError, Message
from orchestrator_tasks import CANCEL_FLAGS, ChatMessage, TaskMessage, encode_task
from orchestrator_telemetry.propagation import current_span_context

from .deadlines import Deadlines
from .model import TaskPage, TaskRecord, TaskStatus
from .store.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    StoreError,
    TaskFinished,
    UnknownCursor,
)
from .store.protocol import TaskStore
from .validation import Submission

__all__ = [
    "DEFAULT_PUBLISH_TIMEOUT",
    "TaskService",
    "Unavailable",
    "cache_key",
    "request_fingerprint",
]

log = logging.getLogger(__name__)

#: How long one store or broker call of a request may take before the client gets a 503.
DEFAULT_PUBLISH_TIMEOUT: Final = 2.0


def _conversation(messages: tuple[ChatMessage, ...]) -> tuple[Any, ...]:
    """What the digests hash of a conversation. A system prompt and one user message (the
    ``prompt``/``system`` shorthand, whichever way it was sent) hash as ``system, prompt``,
    as before conversations: keys made by an older API replica still match during an upgrade.
    Any other conversation hashes as its ``[role, content, name]`` turns, in order."""
    if all(m.name is None for m in messages):
        if len(messages) == 1 and messages[0].role == "user":
            return (None, messages[0].content)
        if len(messages) == 2 and (messages[0].role, messages[1].role) == ("system", "user"):
            return (messages[0].content, messages[1].content)
    return ([[m.role, m.content, m.name] for m in messages],)


def cache_key(tenant: str, submission: Submission) -> str:
    """The prompt cache key of ``submission`` for ``tenant``: a digest of the tenant, the model
    as submitted, the whole conversation and the parameters (canonical JSON: sorted keys), so
    equal requests match, another tenant's never do, and no prompt is kept as a key.
    """
    canonical = orjson.dumps(
        (tenant, submission.model, *_conversation(submission.messages), submission.parameters),
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.blake2b(canonical, digest_size=20).hexdigest()


def request_fingerprint(submission: Submission) -> str:
    """What an ``Idempotency-Key`` is checked against on a replay: a digest of everything the
    request asks (canonical JSON: key order and whitespace do not matter)."""
    canonical = orjson.dumps(
        (
            submission.model,
            *_conversation(submission.messages),
            submission.parameters,
            submission.metadata,
            submission.cache,
            # Only when asked, so earlier keys' fingerprints stay what they were.
            *(() if submission.priority == "normal" else (submission.priority,)),
        ),
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


class Unavailable(Exception):
    """The broker or the store could not take the task; nothing was accepted (answer 503)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the {what} is unavailable")
        self.what = what


@attrs.frozen
class TaskService:
    """The domain side of ``POST /v1/tasks``, ``GET /v1/tasks``, ``GET /v1/tasks/{id}`` and
    ``POST /v1/tasks/{id}/cancel``."""

    broker: Broker
    store: TaskStore
    stream: str
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT
    #: How long a cancel flag stays raised: as long as a task can wait in the queue (the
    #: store's safety TTL for unfinished records).
    cancel_flag_ttl: float = 86_400.0
    deadlines: Deadlines = attrs.field(factory=Deadlines, eq=False, repr=False)

    async def submit(
        self,
        tenant: str,
        submission: Submission,
        idempotency_key: str | None = None,
        *,
        follow: bool = False,
    ) -> tuple[TaskRecord, bool]:
        """Store the task as queued, publish it, and return ``(record, created)``.

        ``created`` is False when ``idempotency_key`` was used before by this tenant: the
        earlier task is returned and nothing is published. While that earlier task's own
        request is still publishing it, ``IdempotencyKeyInUse`` is raised instead (answer
        409: retry shortly); if the earlier request asked something else (another
        ``request_fingerprint``), ``IdempotencyKeyReused`` (answer 422). Unless the
        submission opts out (``cache``), the tenant's identical answer within the TTL is
        reused (the task is returned ``succeeded``, ``cached``) and an identical task in
        flight is joined (the task follows it): neither is published. If the publish fails (or takes
        longer than ``publish_timeout``) the record is discarded and ``Unavailable`` raised,
        so no record stays ``queued`` for a task no worker will ever see. A publish that timed
        out may still land; the worker's results for a discarded task are then ignored. If
        even the discard fails, the record stays pending (``TaskStore.create``): nothing
        joins it, and its idempotency and cache keys are taken over once it is abandoned.
        A published task with an idempotency or cache key is confirmed before the answer,
        so an immediate replay of the key finds it published. ``follow``: the caller follows
        the task's events right away (``TaskStore.create``).
        """
        task_id = os.urandom(16).hex()  # what secrets.token_hex(16) returns, minus two calls
        now = time.time()
        span_context = current_span_context()
        record = TaskRecord(
            id=task_id,
            tenant=tenant,
            status=TaskStatus.QUEUED,
            created_at=now,
            model=submission.model,
            metadata=submission.metadata,
            trace_id=f"{span_context.trace_id:032x}" if span_context.is_valid else None,
            priority=submission.priority,
        )
        bound = self.deadlines.bound(self.publish_timeout)
        try:
            with bound:
                stored = await self.store.create(
                    record,
                    idempotency_key,
                    cache_key(tenant, submission) if submission.cache else None,
                    fingerprint=(
                        None if idempotency_key is None else request_fingerprint(submission)
                    ),
                    deltas=submission.deltas,
                    follow=follow,
                )
        except (IdempotencyKeyInUse, IdempotencyKeyReused):
            raise
        except StoreError as exc:
            raise Unavailable("task store") from exc
        except TimeoutError as exc:
            # The write may still land: remove it (best effort) so it cannot stay queued.
            await self._discard(tenant, task_id)
            raise Unavailable("task store") from exc
        if stored.id != task_id:
            return stored, False
        if stored.cached or stored.joined is not None:
            return stored, True  # answered, or answered with another: nothing to run
        message = Message(
            payload=encode_task(
                TaskMessage(
                    task_id=task_id,
                    tenant=tenant,
                    messages=submission.messages,
                    model=submission.model,
                    parameters=submission.parameters,
                    submitted_at=now,
                    priority=submission.priority,
                    deltas=submission.deltas,
                )
            ),
            id=task_id,
            created_at=now,
        )
        try:
            with bound:  # the same bound again: a fresh deadline, one task lookup
                # Keyed by tenant: the workers share their slots fairly among tenants.
                await self.broker.publish(
                    self.stream, message, key=tenant, priority=submission.priority
                )
        except (BrokerError, TimeoutError) as exc:
            await self._discard(tenant, task_id)
            raise Unavailable("broker") from exc
        except BaseException:
            # Cancelled (client gone, shutdown) mid-publish: we cannot know if it landed, but
            # no one was told it was accepted, so do not leave a queued record behind.
            await self._discard(tenant, task_id)
            raise
        if idempotency_key is not None or submission.cache:
            # Only keyed tasks are ever looked up while pending. A failed confirm only delays
            # joining the task (its first result event confirms it too): the task was
            # accepted, so it is logged, not raised.
            try:
                with bound:
                    await self.store.confirm(tenant, task_id)
            except (StoreError, TimeoutError):
                log.warning("could not confirm published task %s", task_id, exc_info=True)
        return stored, True

    async def get(self, tenant: str, task_id: str) -> TaskRecord | None:
        """The tenant's task, or None (unknown, expired, or another tenant's)."""
        try:
            with self.deadlines.bound(self.publish_timeout):
                return await self.store.get(tenant, task_id)
        except (StoreError, TimeoutError) as exc:
            raise Unavailable("task store") from exc

    async def cancel(self, tenant: str, task_id: str) -> TaskRecord | None:
        """Cancel the tenant's task (``TaskStore.cancel``) and, when its run is to stop,
        raise its cancel flag for the workers (``CANCEL_FLAGS``, for as long as the task
        could still be queued); None for a task that is not the tenant's. Raises
        ``TaskFinished`` (409) for a finished task, ``Unavailable`` when the store or the
        broker cannot be reached: then the cancel may be repeated, harmlessly."""
        try:
            with self.deadlines.bound(self.publish_timeout):
                cancellation = await self.store.cancel(tenant, task_id)
        except TaskFinished:
            raise
        except (StoreError, TimeoutError) as exc:
            raise Unavailable("task store") from exc
        if cancellation is None:
            return None
        if cancellation.stop_run:
            try:
                with self.deadlines.bound(self.publish_timeout):
                    await self.broker.raise_flag(CANCEL_FLAGS, task_id, self.cancel_flag_ttl)
            except (BrokerError, TimeoutError) as exc:
                raise Unavailable("broker") from exc
        return cancellation.record

    async def list_tasks(
        self,
        tenant: str,
        *,
        limit: int,
        after: str | None = None,
        status: TaskStatus | None = None,
    ) -> TaskPage:
        """A page of the tenant's tasks, newest first (``TaskStore.list_tasks``); raises
        ``UnknownCursor`` for an ``after`` that is not one of them."""
        try:
            with self.deadlines.bound(self.publish_timeout):
                return await self.store.list_tasks(tenant, limit=limit, after=after, status=status)
        except UnknownCursor:
            raise
        except (StoreError, TimeoutError) as exc:
            raise Unavailable("task store") from exc

    async def _discard(self, tenant: str, task_id: str) -> None:
        try:
            # Shielded: a cancelled request must still remove its record. Bounded: the store
            # may be the thing that is down.
            async with asyncio.timeout(self.publish_timeout):
                await asyncio.shield(self.store.discard(tenant, task_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("could not discard task %s after a failed publish", task_id, exc_info=True)
