"""``RedisTaskStore``: records and event logs in Redis, shared by every API replica.

Keys (``prefix`` defaults to ``orchestrator``), all expiring:

- ``<prefix>:task:<id>`` hash: the record and the application cursor (see ``_scripts``);
- ``<prefix>:task:<id>:log`` list: the event log (entry *k* has event id ``k + 2``; id ``1``
  is the implied ``queued`` status event, so ``create`` writes one key, not two);
- ``<prefix>:task:<id>:buf`` hash: events waiting for a predecessor;
- ``<prefix>:idem:<tenant>:<key>`` string: the task id an idempotency key created;
- ``<prefix>:cache:<tenant>:<digest>`` hash: a cached answer (expires ``ttl_seconds`` after
  its task succeeded), ``...:lead`` the id of the task in flight for it, and
  ``<prefix>:task:<id>:fol`` that task's followers (see ``_scripts`` and ``_sharing``);
- ``<prefix>:tenant:<tenant>:tasks`` sorted set: the tenant's task ids by creation time (a
  requeued task's by when it was requeued: that starts a new life), for ``list_tasks``.
  Each write drops the ids older than the longest a task can live (``safety_ttl_seconds +
  ttl_seconds``) and sets that as the set's own TTL, so it expires with the tenant's last
  task. Ids of tasks that ended earlier stay until then (a listing skips them, and removes
  those it meets). Cost: about 140 bytes per id once a set holds more than 128 (a skiplist
  node and a dict entry for the 32-character id and its score; ``MEMORY USAGE`` on Redis
  7.0: 1.45 MB for 10,000 ids, ``tests/api/test_store_listing.py``), about 60 while it holds
  fewer (a listpack).

A follower reads through its leader's record and log; the leader keeps only the list of
their ids, to expire them with it. When it ends (``apply``) or is discarded (``discard``),
that call works through the list in batches of ``FOLLOWER_BATCH`` (one short script each),
so a join, a terminal event and every other command cost the same with 10 or 100,000
followers. A release cut short (the process died) resumes on a redelivery of the terminal
event; one never resumed leaves those followers to their safety TTL.

TTL: every key of a task expires ``ttl_seconds`` after the task ends (set atomically with
the terminal event). Until then they carry ``safety_ttl_seconds`` (default 24 h, at least
``ttl_seconds``) from creation, so a task whose result never comes does not stay forever.
``requeue`` (a replayed dead letter) sets the safety TTL again, from then.

Writes of concurrent callers share one pipeline per event-loop turn (the broker library's
``PipelineCoalescer``, resending on a fresh connection after a connection error); every
multi-key change is one Lua script, so it is atomic and costs one command. Live waiting uses
one pub/sub connection per store (``_wakeup``). Single Redis (not Cluster): the idempotency
key lives in another slot than the task's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator_broker import Command, PipelineCoalescer
from orchestrator_broker.redis_settings import RedisSettings
from orchestrator_tasks.messages import ErrorInfo, ResultEvent, Usage

from ..model import (
    TERMINAL_EVENTS,
    Cancellation,
    StoredEvent,
    TaskPage,
    TaskRecord,
    TaskResult,
    TaskStatus,
)
from ._scripts import APPLY, CANCEL, CREATE, DISCARD, FOLLOWERS, PAGE, REQUEUE, SUBMIT, Script
from ._sharing import ORPHANED, cache_hit, cancelled, reused_events
from ._sharing import follow as following
from ._steps import DONE_SEQ, QUEUED_DATA, step_for
from ._wakeup import Wakeups
from .errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    StoreError,
    StoreUnavailable,
    TaskFinished,
    UnknownCursor,
)
from .memory import DEFAULT_PENDING_SECONDS, DEFAULT_SAFETY_TTL

__all__ = ["FOLLOWER_BATCH", "RedisTaskStore"]

log = logging.getLogger(__name__)

#: Followers released (or failed) per script call: each takes the server about 1 ms per 250
#: (the other clients of that Redis wait that long), and one call per batch goes on the
#: terminal event's way.
FOLLOWER_BATCH = 256

_RECORD_FIELDS = ("tn", "m", "st", "sa", "fa", "n", "r", "e", "j", "c", "p", "xv")
#: What a follower shows of its leader (not its fixed part: its own metadata may be large).
_LEADER_FIELDS = ("tn", "st", "sa", "fa", "n", "r", "e")
_TERMINAL = frozenset({b"succeeded", b"failed", b"cancelled", "succeeded", "failed", "cancelled"})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: Live readers whose last read position is kept (a few bytes each).
_MAX_POSITIONS = 10_000
#: How long a log entry this process appended is handed to its own readers instead of read
#: (``RedisTaskStore.events``): long enough for the readers it woke, short enough that no
#: log can have been rebuilt under it (a requeue rebuilds only an expired task's log).
_HANDOFF_SECONDS = 5.0
#: The longest a woken reader waits for an apply of this process in flight to hand it the
#: entry, before it reads the log instead (an apply takes one round trip).
_APPLY_WAIT_SECONDS = 0.5


def _after_index(after: str | None) -> int:
    if after is None:
        return 0
    try:
        return max(int(after), 0)
    except ValueError:
        return 0  # not one of ours: replay from the start rather than lose events


def _decode_result(blob: bytes | str) -> TaskResult:
    data = orjson.loads(blob)
    usage = data.get("usage")
    return TaskResult(
        text=data["text"],
        provider=data.get("provider"),
        model=data.get("model"),
        usage=Usage(**usage) if usage is not None else None,
        finish_reason=data.get("finish_reason"),
        cost_usd=data.get("cost_usd"),
    )


def _decode_error(blob: bytes | str) -> ErrorInfo:
    data = orjson.loads(blob)
    return ErrorInfo(type=data["type"], message=data["message"])


def _decode_record(fields: Sequence[Any]) -> TaskRecord:
    tenant, fixed, status, started, finished, attempts, result, error, *more = fields
    # (older scripts return the first ten fields only)
    joined, cached, partial, view = (*more, None, None, None, None)[:4]
    meta = orjson.loads(fixed)
    task_result = None if result is None else _decode_result(result)
    task_error = None if error is None else _decode_error(error)
    record = TaskRecord(
        id=meta["id"],
        tenant=_text(tenant),
        status=TaskStatus(_text(status)),
        created_at=meta["created_at"],
        model=meta.get("model"),
        started_at=float(started) if started is not None else None,
        finished_at=float(finished) if finished is not None else None,
        attempts=int(attempts) if attempts is not None else 0,
        result=task_result,
        error=task_error,
        metadata=meta.get("metadata") or {},
        trace_id=meta.get("trace_id"),
        cached=cached is not None,
        joined=_text(joined) if joined is not None else None,
        partial_text=_text(partial) if partial is not None else None,
        priority=meta.get("priority", "normal"),
    )
    if view is None:
        return record
    # A leader cancelled while others follow its run: how it shows to its own tenant.
    shown = orjson.loads(view)
    return cancelled(record, shown["finished_at"], shown["partial_text"])


def _fixed(record: TaskRecord) -> bytes:
    """The record's fixed part, hash field ``m``."""
    return orjson.dumps(
        {
            "id": record.id,
            "created_at": record.created_at,
            "model": record.model,
            "metadata": record.metadata,
            "trace_id": record.trace_id,
            "priority": record.priority,
        }
    )


def _translate(action: str, exc: RedisError | OSError) -> StoreError:
    """The store's own error for a redis-py one (raise it ``from`` the cause)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return StoreUnavailable(f"Redis unreachable during {action}: {exc}")
    return StoreError(f"Redis error during {action}: {exc}")


@contextlib.contextmanager
def _translated(action: str) -> Any:
    """Turn redis-py errors into the store's own, ``from`` the cause."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise _translate(action, exc) from exc


def client_for(settings: RedisSettings) -> Redis:
    """A client owning its own pool for ``settings`` (the task store's and the batch
    store's)."""
    extra: dict[str, Any] = {"connection_class": SSLConnection} if settings.tls else {}
    pool = BlockingConnectionPool(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=settings.socket_timeout,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        # One quick retry on a fresh connection (a pooled one may predate a Redis restart);
        # no backoff, so a down Redis fails the request in about the connect timeout.
        retry=Retry(NoBackoff(), 1),
        **extra,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it


class RedisTaskStore:
    """The TaskStore on Redis; safe to share between any number of API replicas."""

    def __init__(
        self,
        client: Redis,
        *,
        ttl_seconds: float,
        safety_ttl_seconds: float = DEFAULT_SAFETY_TTL,
        pending_seconds: float = DEFAULT_PENDING_SECONDS,
        prefix: str = "orchestrator",
        owns_client: bool = False,
        location: str = "redis",
        subscription_linger: float = 5.0,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        self.ttl_seconds = ttl_seconds
        self.safety_ttl_seconds = max(safety_ttl_seconds, ttl_seconds)
        self.pending_seconds = pending_seconds
        self._ttl_ms = str(max(int(ttl_seconds * 1000), 1))
        self._safety_ms = str(max(int(self.safety_ttl_seconds * 1000), 1))
        # The longest a task can live: the safety TTL, then the TTL after a last-moment end.
        self._lifetime = self.safety_ttl_seconds + ttl_seconds
        self._lifetime_ms = str(max(int(self._lifetime * 1000), 1))
        self._pending_ms = str(max(int(pending_seconds * 1000), 0))
        self._client = client
        self._owns_client = owns_client
        self._location = location
        self._task_prefix = f"{prefix}:task:"
        self._idem_prefix = f"{prefix}:idem:"
        self._cache_prefix = f"{prefix}:cache:"
        self._tenant_prefix = f"{prefix}:tenant:"
        # Every command sent is safe to repeat (idempotent scripts, reads): a pipeline that
        # fails on a connection error is resent once on a fresh connection.
        self._batcher = PipelineCoalescer(client, resend=True)
        self._closed = False
        pool = client.connection_pool
        # RESP2 on the subscriber: pub/sub messages are then plain replies of read_response()
        # (under RESP3 redis-py routes them to a push handler instead).
        self._wakeups = Wakeups(
            lambda: pool.connection_class(**{**pool.connection_kwargs, "protocol": 2}),
            linger=subscription_linger,
        )
        #: (tenant, task id) -> (log position, wake-up generation) of live readers' last
        #: reads (see ``events``); insertion order is age.
        self._positions: dict[tuple[str, str], tuple[int, int]] = {}
        #: task id -> (log id, tenant, the entry, when) of the newest entry this process
        #: appended alone to the task's log (``apply``): its readers take it from here
        #: instead of reading the log; insertion order is age.
        self._handed: dict[str, tuple[int, str, StoredEvent, float]] = {}
        #: task id -> this process's applies in flight for it, and an event set when the
        #: last one is over (made only for readers waiting on it): a reader woken by an
        #: apply's message waits for that apply to hand the entry over, not to read it.
        self._applying: dict[str, int] = {}
        self._applied: dict[str, asyncio.Event] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ttl_seconds: float,
        safety_ttl_seconds: float = DEFAULT_SAFETY_TTL,
        pending_seconds: float = DEFAULT_PENDING_SECONDS,
        prefix: str = "orchestrator",
        subscription_linger: float = 5.0,
        **settings: Any,
    ) -> RedisTaskStore:
        """Connect to ``host:port``, ``redis://`` or ``rediss://`` (``RedisSettings`` rules;
        ``settings`` override its pool and timeout fields). Connects lazily."""
        return cls.from_settings(
            RedisSettings.from_uri(url, **settings),
            ttl_seconds=ttl_seconds,
            safety_ttl_seconds=safety_ttl_seconds,
            pending_seconds=pending_seconds,
            prefix=prefix,
            subscription_linger=subscription_linger,
        )

    @classmethod
    def from_settings(
        cls,
        settings: RedisSettings,
        *,
        ttl_seconds: float,
        safety_ttl_seconds: float = DEFAULT_SAFETY_TTL,
        pending_seconds: float = DEFAULT_PENDING_SECONDS,
        prefix: str = "orchestrator",
        subscription_linger: float = 5.0,
    ) -> RedisTaskStore:
        """A store with its own connection pool (closed by ``close()``)."""
        return cls(
            client_for(settings),
            ttl_seconds=ttl_seconds,
            safety_ttl_seconds=safety_ttl_seconds,
            pending_seconds=pending_seconds,
            prefix=prefix,
            owns_client=True,
            location=settings.masked_url,
            subscription_linger=subscription_linger,
        )

    def __repr__(self) -> str:
        return f"RedisTaskStore({self._location!r}, ttl_seconds={self.ttl_seconds!r})"

    # -- keys -----------------------------------------------------------------------------

    def _keys(self, task_id: str) -> tuple[str, str, str]:
        record = self._task_prefix + task_id
        return record, record + ":log", record + ":buf"

    def _index_key(self, tenant: str) -> str:
        return self._tenant_prefix + tenant + ":tasks"

    def _index_entry(self, score: float) -> tuple[str, str, str]:
        """ARGV of an index write scored ``score``: score, cutoff, the set's lifetime (ms)."""
        return repr(score), repr(score - self._lifetime), self._lifetime_ms

    def _channel(self, task_id: str) -> str:
        return self._task_prefix + task_id + ":wake"

    # -- plumbing -------------------------------------------------------------------------

    def _run(self, *commands: Command) -> asyncio.Future[list[Any]]:
        # A plain function returning the batcher's future: no coroutine frame per call.
        if self._closed:
            raise StoreUnavailable("the task store is closed")
        return self._batcher.submit(*commands)

    async def _script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return (await self._run(command))[0]
        except NoScriptError:
            # First use on this server (or it restarted / was flushed): load, then retry.
            await self._client.script_load(script.source)
            return (await self._run(command))[0]

    # -- TaskStore ------------------------------------------------------------------------

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
        if record.status is not TaskStatus.QUEUED:
            raise ValueError(f"a new task must be queued, got {record.status}")
        if follow:
            # Subscribed alongside the write, on the subscriber's own connection: see
            # ``_created``.
            self._wakeups.prepare(self._channel(record.id))
        fixed = _fixed(record)
        record_key = self._task_prefix + record.id
        index_key = self._index_key(record.tenant)
        score, cutoff, lifetime = self._index_entry(record.created_at)
        if idempotency_key is None and cache_key is None:
            # The plainest case needs no script: plain commands in the shared pipeline.
            # Repeating them (the batcher's retry) is harmless: nobody has seen the task yet.
            # (try/except inline: _translated's generator costs a few us on every submission.)
            try:
                await self._run(
                    ("HSET", record_key, "tn", record.tenant, "m", fixed, "st", "queued"),
                    ("PEXPIRE", record_key, self._safety_ms),
                    ("ZADD", index_key, score, record.id),
                    ("ZREMRANGEBYSCORE", index_key, "-inf", "(" + cutoff),
                    ("PEXPIRE", index_key, lifetime),
                )
            except (RedisError, OSError) as exc:
                raise _translate("create", exc) from exc
            return self._created(record, follow)
        idem = "" if idempotency_key is None else self._idem_prefix + record.tenant + ":"
        idem += idempotency_key or ""
        if cache_key is None:
            keys: tuple[str, ...] = (record_key, idem, index_key)
            args: tuple[Any, ...] = (
                record.tenant,
                fixed,
                self._safety_ms,
                record.id,
                self._task_prefix,
                self._pending_ms,
                fingerprint or "",
                score,
                cutoff,
                lifetime,
            )
            script = CREATE
        else:
            cache = self._cache_prefix + record.tenant + ":" + cache_key
            keys = (record_key, idem, cache, cache + ":lead", index_key)
            args = (
                record.tenant,
                fixed,
                self._safety_ms,
                record.id,
                self._task_prefix,
                self._ttl_ms,
                repr(record.created_at),
                self._pending_ms,
                fingerprint or "",
                score,
                cutoff,
                lifetime,
                "1" if deltas else "0",
            )
            script = SUBMIT
        try:
            reply = await self._script(script, keys, args)
            if not isinstance(reply, list):
                if reply == 2:
                    raise IdempotencyKeyInUse("this idempotency key's task is being submitted")
                if reply == 3:
                    raise IdempotencyKeyReused("this idempotency key was used by another request")
                return self._created(record, follow)
            if script is SUBMIT:
                # A new follower or hit comes back as what it adds to ``record`` (the usual
                # shared answer: no second round trip, nothing decoded twice).
                kind = reply[0]
                if kind in (b"j", "j"):
                    _, leader, status, started, attempts = reply
                    return following(
                        record,
                        _text(leader),
                        TaskStatus(_text(status)),
                        None if started is None else float(started),
                        0 if attempts is None else int(attempts),
                    )
                if kind in (b"h", "h"):
                    return cache_hit(record, _decode_result(reply[1]), record.created_at)
                reply = reply[1:]
            existing = _decode_record(reply)
            # (A follower whose leader is gone is shown as it is stored.)
            return await self._shown(existing) or existing
        except (RedisError, OSError) as exc:
            raise _translate("create", exc) from exc

    def _created(self, record: TaskRecord, follow: bool) -> TaskRecord:
        """``record``, just stored to be run. For a caller about to follow it (``follow``):
        if the subscription to its wake-ups is confirmed by now, nothing can have been
        appended to its log (it is not published yet) and anything appended from now on
        changes the channel's generation; so its reader's first ``events()`` from its start
        waits without reading the log, as after a read that found nothing. (Not confirmed
        yet: that reader reads as usual, and finds the subscription under way.)"""
        if follow:
            generation = self._wakeups.generation(self._channel(record.id))
            if generation is not None:
                self._remember((record.tenant, record.id), 1, generation)
        return record

    async def confirm(self, tenant: str, task_id: str) -> None:
        # Ids are random 128-bit values: no tenant check needed to delete one flag.
        try:
            await self._run(("HDEL", self._task_prefix + task_id, "pv"))
        except (RedisError, OSError) as exc:
            raise _translate("confirm", exc) from exc

    async def _shown(self, record: TaskRecord) -> TaskRecord | None:
        """``record`` as shown: through its leader while it follows one (None once the
        leader is gone)."""
        leader_id = record.joined
        if leader_id is None or record.status.terminal:
            return record
        (fields,) = await self._run(("HMGET", self._task_prefix + leader_id, *_LEADER_FIELDS))
        tenant, status, started, finished, attempts, result, error = fields
        if tenant is None:
            return None
        return following(
            record,
            leader_id,
            TaskStatus(_text(status)),
            None if started is None else float(started),
            0 if attempts is None else int(attempts),
            None if finished is None else float(finished),
            None if result is None else _decode_result(result),
            None if error is None else _decode_error(error),
        )

    async def discard(self, tenant: str, task_id: str) -> None:
        self._handed.pop(task_id, None)
        args = (tenant, task_id, self._channel(task_id), self._ttl_ms)
        with _translated("discard"):
            removed = await self._script(
                DISCARD, (*self._keys(task_id), self._index_key(tenant)), args
            )
            if removed > 1:  # it had followers: they fail
                error = {"type": ORPHANED.type, "message": ORPHANED.message}
                orphan = (
                    repr(time.time()),
                    orjson.dumps(error),
                    orjson.dumps(["error", {**error, "attempt": 0}]),
                )
                await self._followers(task_id, "orphan", *orphan)

    async def _followers(self, task_id: str, action: str, *extra: Any) -> None:
        """Work through the followers list of ``task_id`` (ended or discarded: it only
        shrinks) one ``FOLLOWERS`` batch at a time; see ``_scripts``."""
        record = self._task_prefix + task_id
        keys = (record, record + ":fol")
        args = (action, FOLLOWER_BATCH, self._task_prefix, self._ttl_ms, *extra)
        left = await self._script(FOLLOWERS, keys, args)
        # Bounded: nothing joins a task that ended, so this many batches empty the list.
        for _ in range(left // FOLLOWER_BATCH + 1):
            if not left:
                return
            left = await self._script(FOLLOWERS, keys, args)
        if left:
            log.warning("task %s: %d followers left to %s", task_id, left, action)

    async def get(self, tenant: str, task_id: str) -> TaskRecord | None:
        with _translated("get"):
            (fields,) = await self._run(("HMGET", self._task_prefix + task_id, *_RECORD_FIELDS))
            if fields[0] is None or _text(fields[0]) != tenant:
                return None
            record = _decode_record(fields)
            if record.joined is None:
                return record
            return await self._shown(record)

    async def cancel(self, tenant: str, task_id: str) -> Cancellation | None:
        """See ``TaskStore.cancel``: one ``CANCEL`` script, between two reads of the task
        as it is shown (a follower's attempts and start come from its leader)."""
        shown = await self.get(tenant, task_id)
        if shown is None:
            return None
        following = shown.joined is not None and not shown.status.terminal
        args = (
            tenant,
            task_id,
            self._ttl_ms,
            repr(time.time()),
            self._task_prefix,
            shown.attempts if following else 0,
            repr(shown.started_at) if following and shown.started_at is not None else "",
        )
        record, log_key, _ = self._keys(task_id)
        with _translated("cancel"):
            outcome = int(await self._script(CANCEL, (record, log_key), args))
        if outcome == 0:
            return None
        now = await self.get(tenant, task_id)
        if now is None:  # expired in between
            return None
        if outcome == 1:
            raise TaskFinished(now)
        return Cancellation(now, stop_run=outcome in (2, 5))

    async def list_tasks(
        self,
        tenant: str,
        *,
        limit: int,
        after: str | None = None,
        status: TaskStatus | None = None,
    ) -> TaskPage:
        """See ``TaskStore.list_tasks``: pages of the tenant index (``PAGE``), each page's
        records read with ``get`` in one pipeline, until ``limit + 1`` match or the index
        ends. With a ``status`` filter a page grows (to 1,000 ids), as a rare status may be
        far down a long list; the cost is one round trip per page scanned."""
        index_key = self._index_key(tenant)
        found: list[TaskRecord] = []
        stale: list[str] = []
        cursor, cursor_score = after or "", ""
        size = limit + 1 if status is None else max(limit + 1, 100)
        with _translated("list"):
            while len(found) <= limit:
                known, flat = await self._script(PAGE, (index_key,), (cursor, cursor_score, size))
                if not known:
                    raise UnknownCursor(f"{after!r} is not one of this tenant's tasks")
                ids = [_text(flat[i]) for i in range(0, len(flat), 2)]
                if not ids:
                    break
                records = await asyncio.gather(*(self.get(tenant, task_id) for task_id in ids))
                for task_id, record in zip(ids, records, strict=True):
                    if record is None:
                        stale.append(task_id)  # expired (or a follower whose leader went)
                    elif status is None or record.status is status:
                        found.append(record)
                cursor, cursor_score = ids[-1], _text(flat[-1])
                if len(ids) < size:
                    break
                if status is not None:
                    size = min(size * 2, 1000)
            if stale:
                await self._run(("ZREM", index_key, *stale))
        return TaskPage(tuple(found[:limit]), has_more=len(found) > limit)

    async def requeue(self, record: TaskRecord, attempts: int) -> int:
        """See ``TaskStore.requeue``; one atomic ``REQUEUE`` script call."""
        self._handed.pop(record.id, None)  # (the log may be rebuilt)
        args = (
            record.tenant,
            record.id,
            _fixed(attrs.evolve(record, metadata={})),
            attempts,
            self._safety_ms,
            *self._index_entry(time.time()),
            self._channel(record.id),
            DONE_SEQ,
        )
        keys = (*self._keys(record.id), self._index_key(record.tenant))
        with _translated("requeue"):
            kept = int(await self._script(REQUEUE, keys, args))
        if kept < 0:
            raise ValueError(f"task {record.id} is another tenant's")
        return kept

    async def apply(self, event: ResultEvent) -> bool:
        """See ``TaskStore.apply``; one atomic ``APPLY`` script call (``_steps.Cursor`` rules)."""
        step = step_for(event)
        payload = cached = cached_entry = b""
        if step.result is not None:
            result = {k: v for k, v in step.data.items() if k != "attempt"}
            payload = orjson.dumps(result)
            # What a cache hit shows (used only if the task leads a cache key).
            result["cost_usd"] = 0.0
            cached = orjson.dumps(result)
            cached_entry = orjson.dumps(["result", {**result, "attempt": 0}])
        elif step.error is not None:
            payload = orjson.dumps({"type": step.error.type, "message": step.error.message})
        elif step.partial_text is not None:
            payload = step.partial_text.encode()
        args = (
            event.tenant,
            event.task_id,
            event.attempt,
            event.seq,
            self._ttl_ms,
            self._safety_ms,
            self._channel(event.task_id),
            "1" if step.terminal else "0",
            step.status.value,
            repr(step.at),
            orjson.dumps([step.event, step.data]),
            payload,
            cached,
            cached_entry,
            repr(step.started if step.started is not None else step.at),
        )
        task_id = event.task_id
        self._applying[task_id] = self._applying.get(task_id, 0) + 1
        try:
            with _translated("apply"):
                reply = await self._script(APPLY, self._keys(task_id), args)
            outcome, entry_id = (reply, 0) if isinstance(reply, int) else map(int, reply)
            if entry_id:
                self._hand(event, entry_id, step.event, step.data, step.terminal)
        finally:
            self._apply_over(task_id)
        with _translated("apply"):
            if outcome >= 3:  # the task ended (4: before, but its release was cut short)
                await self._followers(event.task_id, "release")
        return bool(outcome)

    def _hand(
        self, event: ResultEvent, entry_id: int, name: str, data: dict[str, Any], ended: bool
    ) -> None:
        """Keep the entry just appended for this process's readers, and wake them."""
        stored = StoredEvent(id=str(entry_id), event=name, data=data)
        handed = self._handed
        handed.pop(event.task_id, None)
        at = asyncio.get_running_loop().time()
        # Entries past their use go (oldest first): a result entry holds the whole answer.
        while handed and (
            len(handed) >= _MAX_POSITIONS or at - next(iter(handed.values()))[3] > _HANDOFF_SECONDS
        ):
            del handed[next(iter(handed))]
        # Kept before the waiters are woken (they run later, and look here first).
        handed[event.task_id] = (entry_id, event.tenant, stored, at)
        self._wakeups.deliver(self._channel(event.task_id), entry_id, ended=ended)

    def _apply_over(self, task_id: str) -> None:
        left = self._applying[task_id] - 1
        if left:
            self._applying[task_id] = left
            return
        del self._applying[task_id]
        waiting = self._applied.pop(task_id, None)
        if waiting is not None:
            waiting.set()

    async def _applies_over(self, task_id: str) -> None:
        """Wait (briefly) for this process's applies of the task in flight to end."""
        if task_id not in self._applying:
            return
        over = self._applied.setdefault(task_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_APPLY_WAIT_SECONDS):
                await over.wait()

    def _handed_after(
        self, tenant: str, task_id: str, start: int, end_only: bool
    ) -> StoredEvent | None:
        """The entry right after ``start`` (for ``end_only``: or the terminal one), if this
        process just appended it (``_hand``)."""
        handed = self._handed.get(task_id)
        if handed is None or handed[1] != tenant:
            return None
        entry_id, _, stored, at = handed
        if entry_id != start + 1 and not (
            end_only and entry_id > start and stored.event in TERMINAL_EVENTS
        ):
            return None
        if asyncio.get_running_loop().time() - at > _HANDOFF_SECONDS:
            return None
        return stored

    async def _read(
        self, tenant: str, task_id: str, start: int
    ) -> tuple[list[StoredEvent], bool, str]:
        """Log entries with id > ``start``, whether more may come (known and not ended), and
        whose log it is (a follower reads its leader's)."""
        record, log_key, _ = self._keys(task_id)
        with _translated("events"):
            head, entries = await self._run(
                ("HMGET", record, "tn", "st", "j", "xv", "xc"),
                ("LRANGE", log_key, max(start - 1, 0), -1),
            )
            if head[0] is None or _text(head[0]) != tenant:
                return [], False, task_id
            if head[3] is not None:
                return self._cut_log(head, entries, start), False, task_id
            source = task_id
            if head[2] is not None and head[1] not in _TERMINAL:
                source = _text(head[2])
                record, log_key, _ = self._keys(source)
                head, entries = await self._run(
                    ("HMGET", record, "tn", "st"), ("LRANGE", log_key, max(start - 1, 0), -1)
                )
                if head[0] is None:
                    return [], False, task_id
        events: list[StoredEvent] = []
        if start < 1:
            events.append(StoredEvent(id="1", event="status", data=dict(QUEUED_DATA)))
        first_id = max(start, 1) + 1
        for offset, raw in enumerate(entries):
            name, data = orjson.loads(raw)
            events.append(StoredEvent(id=str(first_id + offset), event=name, data=data))
        if source != task_id:
            events = reused_events(events)
        return events, not TaskStatus(_text(head[1])).terminal, source

    @staticmethod
    def _cut_log(head: Sequence[Any], entries: Sequence[Any], start: int) -> list[StoredEvent]:
        """The log of a leader cancelled while others follow its run: its own share of the
        run's log (``xc`` entries), then its ``cancelled`` event; ids after ``start``."""
        view = orjson.loads(head[3])
        own = int(head[4])
        events: list[StoredEvent] = []
        if start < 1:
            events.append(StoredEvent(id="1", event="status", data=dict(QUEUED_DATA)))
        first_id = max(start, 1) + 1
        for offset, raw in enumerate(entries[: max(own - (first_id - 2), 0)]):
            name, data = orjson.loads(raw)
            events.append(StoredEvent(id=str(first_id + offset), event=name, data=data))
        if start < own + 2:
            data = {"partial_text": view["partial_text"] or "", "attempt": view["attempt"]}
            events.append(StoredEvent(id=str(own + 2), event="cancelled", data=data))
        return events

    async def events(
        self,
        tenant: str,
        task_id: str,
        after: str | None = None,
        timeout: float = 0.0,
        *,
        end_only: bool = False,
    ) -> list[StoredEvent]:
        start = _after_index(after)
        # A live reader calls again right after each batch: if nothing was published on the
        # task's channel since the read that ended the last call (its subscription held all
        # along), that read is still the whole truth and this call goes straight to waiting.
        known = self._positions.pop((tenant, task_id), None)
        channel = self._channel(task_id)
        if (
            timeout > 0
            and (handed := self._handed_after(tenant, task_id, start, end_only)) is not None
        ):
            return self._handed_to(tenant, task_id, handed, channel)
        unchanged = known is not None and known == (start, self._wakeups.generation(channel))
        if timeout <= 0 or not unchanged:
            events, open_, source = await self._read(tenant, task_id, start)
            if events or not open_ or timeout <= 0:
                return events
        else:
            source = task_id  # as the last read found: its own log, open, nothing after start
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._watch(source, end_only=end_only) as woken:
            # Now that this waiter is registered nothing can slip by: wait first, unless a
            # message came in since the last call.
            if unchanged and known == (start, self._wakeups.generation(channel)):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await woken.wait()
            while True:
                woken.clear()
                await self._applies_over(task_id)
                if (handed := self._handed_after(tenant, task_id, start, end_only)) is not None:
                    return self._handed_to(tenant, task_id, handed, channel)
                generation = self._wakeups.generation(self._channel(source))
                try:
                    events, open_, _ = await self._read(tenant, task_id, start)
                except StoreUnavailable:
                    # A blip while the subscriber reconnects (it wakes everyone on a lost
                    # connection): keep the reader waiting, retrying now and then, until
                    # its deadline; only then does the outage reach the caller.
                    if self._closed or deadline - loop.time() <= 0:
                        raise
                    await asyncio.sleep(min(0.2, max(deadline - loop.time(), 0.0)))
                    continue
                remaining = deadline - loop.time()
                if events or not open_ or remaining <= 0:
                    if open_ and source == task_id and generation is not None:
                        self._remember(
                            (tenant, task_id), int(events[-1].id) if events else start, generation
                        )
                    return events
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await woken.wait()

    def _handed_to(
        self, tenant: str, task_id: str, handed: StoredEvent, channel: str
    ) -> list[StoredEvent]:
        """A live reader's batch of one entry handed over (``_hand``). If it is the newest
        entry announced on the channel and nothing came in since, the reader's next call
        waits without reading (as after a read)."""
        position = int(handed.id)
        if handed.event not in TERMINAL_EVENTS and self._wakeups.newest(channel) == position:
            generation = self._wakeups.generation(channel)
            if generation is not None:
                self._remember((tenant, task_id), position, generation)
        return [handed]

    def _remember(self, key: tuple[str, str], position: int, generation: int) -> None:
        """Where a live reader's read left it (bounded: the oldest entries go first)."""
        self._positions[key] = (position, generation)
        if len(self._positions) > _MAX_POSITIONS:
            del self._positions[next(iter(self._positions))]

    @contextlib.asynccontextmanager
    async def _watch(self, task_id: str, *, end_only: bool = False) -> AsyncIterator[asyncio.Event]:
        async with self._wakeups.watch(self._channel(task_id), end_only=end_only) as woken:
            yield woken

    async def ping(self) -> None:
        with _translated("ping"):
            await self._client.ping()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._wakeups.close()
        await self._batcher.drain()
        if self._owns_client:
            await self._client.aclose()
