"""The Redis Streams adapter: one stream per queue, consumer groups, at-least-once delivery.

Needs Redis >= 7.0. Build it with ``RedisStreamsBroker.from_url(uri, **options)`` (no I/O
until first use; ``uri`` as ``RedisSettings.from_uri`` accepts) and ``await close()`` it.

Layout in Redis, for a stream ``S``:

- ``S``: the stream. One entry per message (fields from ``message.encode_fields``: ``id``,
  ``created_at``, ``payload``, ``prior_deliveries``, then one plain field per header).
- ``S:delayed``: a ZSET of nacked entries waiting out their delay, scored by due time (ms,
  server clock). Consumers move due ones back onto ``S`` (new id, ``prior_deliveries``
  set) at every loop turn, atomically (Lua), so none is lost or doubled; a consumer blocked
  in ``XREADGROUP`` wakes up when the next one falls due.
- ``S:dead``: dead letters: the original entry's fields plus ``dead_reason``,
  ``dead_entry_id``, ``dead_group``, ``dead_delivery_count`` (deliveries actually handed
  out) and ``dead_consumer``. ``dead_letters(S)`` reads them back as ``DeadLetter``
  (``raw_fields`` = the original fields only; ``message`` is None if they do not decode),
  a page at a time (``XRANGE`` after an id); ``remove_dead_letter`` is an ``XDEL`` and
  ``purge_dead_letters`` one ``XTRIM`` (``MINID`` of the server's time minus the age, by Lua;
  ``MAXLEN 0`` for all).

Guarantees, and the traps they avoid:

- Settling is atomic. ``ack`` is ``XACK``; ``nack(delay)`` and ``dead_letter(reason)`` are
  Lua scripts that check the entry is still pending for this consumer (else ``LeaseLost``),
  copy it (back onto the stream for ``nack(0)``, into ``S:delayed``, or into ``S:dead``) and
  ``XACK`` it in one step (Redis 7.0 has no ``XNACK``). They ``XDEL`` the original only when
  the stream has a single group, as another group may still need it. A nacked entry comes
  back as a new entry that every group of the stream sees: give nack-using work queues a
  stream of their own (one group).
- Delivery count = the PEL's delivery counter + ``prior_deliveries``. Reading the own PEL
  and ``XAUTOCLAIM`` raise the counter; past ``max_deliveries`` the consumer dead-letters the
  entry (reason "exceeded max_deliveries (N)") instead of yielding it.
- Nothing is silently dropped: undecodable entries (reason "undecodable entry: ..."), and
  entries deleted while pending (``XAUTOCLAIM``'s third reply element, nil fields on an
  own-PEL read, a nack of a deleted entry) are logged and recorded in ``S:dead``, the latter
  with reason "entry deleted before it could be redelivered".
- Leases: ``extend_lease()`` is a Lua ``XCLAIM ... JUSTID`` guarded by an ownership check
  (idle time reset, counter untouched). With ``auto_extend`` a consumer renews all its
  unsettled deliveries, yielded or still buffered, in one batched call every ``lease / 3``.
  A delivery whose ack/nack failed (Redis down) is no longer renewed: if the caller gives
  up, its lease runs out and it is redelivered. Every ``reclaim_interval`` a consumer
  ``XAUTOCLAIM``s entries idle for longer than ``lease``.
- A consumer's first reads, and its first reads after an outage, drain its own PEL
  (``XREADGROUP ... 0``) before new entries (``>``), so a restarted consumer with the same
  name resumes its pending work. Closing the iterator, or the broker, hands entries that
  were fetched but not yet yielded back onto the stream (immediate redelivery, count kept).
- Retention: ``XADD`` never uses ``MAXLEN`` (it would trim pending and undelivered
  entries). Instead consumers run ``trim()`` every ``trim_interval`` seconds (default 60;
  None disables): one Lua script that ``XTRIM MINID``s to the oldest id any group of the
  stream still needs (per group, the smaller of its first pending id and the successor of
  its last-delivered id), keeping acked entries younger than ``retain_acked`` seconds
  (default 0). A stream without groups is never trimmed, and a group nobody reads any more
  holds retention back for the whole stream: ``XGROUP DESTROY`` it. The same pass trims
  ``S:dead`` to its newest ``dead_letter_maxlen`` entries (default 10,000; 0 keeps all), so
  between passes it may briefly hold more.
- Blocking reads use their own connection pool whose socket timeout is ``read_timeout``
  (default 30 s); ``ConsumeOptions.block`` must be at least 0.5 s below it (``ConfigError``
  otherwise), or redis-py would raise ``TimeoutError`` on every idle stream. That pool also
  has ``max_connections``: one connection per concurrently reading consumer.
- Writes are coalesced: every ``XADD`` of ``publish``, every ``XACK`` and every settle or
  lease script issued within one event-loop turn goes out in one round trip, packed as RESP
  directly (about twice redis-py's pipeline throughput). The pools are
  ``BlockingConnectionPool``s (callers wait up to ``pool_timeout`` for a connection rather
  than fail past a fixed count).
- Outages: every redis-py connection, timeout, loading, OOM or read-only error surfaces as
  ``BrokerUnavailable`` (raised ``from`` the cause); ``publish`` fails fast (1 s connect
  timeout, no retry loop), so an API can answer 503 at once. Consumers reconnect by
  themselves with exponential backoff and jitter capped at 3 s, recreate a lost group
  (``NOGROUP``: deleted, or Redis restarted empty) at ``0``, and log once per outage.
- Presence (``announce``/``withdraw``/``members``): see ``_redis_presence``; one Lua script
  per call through the write coalescer, TTLs on the server's clock.
- Flags (``raise_flag``/``raised_flags``/``watch_flags``): see ``_redis_flags``; a key per
  flag, one pub/sub connection per watcher (from the reading pool).
- A task cancelled while consuming always ends, even when redis-py's ``wait_for`` swallowed
  the cancel (Python 3.11).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, Collection, Mapping
from typing import Any

import attrs
from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from ._dead_letters import check_age, check_entry_id, read_dead_letter
from ._fair import check_fair, check_top, fairness_arg
from ._flags import check_flag
from ._presence import check_ttl, decode_payload, encode_payload
from ._redis_coalesce import PipelineCoalescer
from ._redis_delivery import RedisDelivery
from ._redis_errors import chained_broker_error, is_nogroup, mapped_errors
from ._redis_fair import (
    FairScripts,
    capped_key,
    depth_key,
    run_key,
    waiting_key,
    waiting_keys_key,
)
from ._redis_flags import RAISE_FLAG, flag_channel, flag_key, watch_channel
from ._redis_presence import PresenceScripts, presence_keys
from ._redis_reads import claim
from ._redis_scripts import (
    Scripts,
)
from .errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    LeaseLost,
)
from .message import Message, encode_fields
from .protocol import (
    DEFAULT_DEAD_LETTER_MAXLEN,
    PRIORITIES,
    ConsumeOptions,
    DeadLetter,
    Delivery,
    Fairness,
    Priority,
    dead_letter_stream,
)
from .redis_settings import RedisSettings

logger = logging.getLogger("orchestrator_broker.redis")

#: The oldest Redis the adapter works with.
MIN_REDIS_VERSION = (7, 0)
#: How far below the read socket timeout ``ConsumeOptions.block`` must stay.
BLOCK_MARGIN = 0.5
#: Most ids renewed by one extend script call (Lua's unpack has a stack limit).
_EXTEND_CHUNK = 1000


def delayed_key(stream: str) -> str:
    """The ZSET holding ``stream``'s nacked entries until they are due."""
    return f"{stream}:delayed"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStreamsBroker:
    """The ``Broker`` protocol on Redis Streams (Redis >= 7.0); see the module docstring.

    Construct with ``from_url`` (no I/O: connections open on first use) and ``await
    close()`` at the end.
    """

    def __init__(
        self,
        settings: RedisSettings,
        *,
        retain_acked: float = 0.0,
        trim_interval: float | None = 60.0,
        max_batch: int = 1000,
        dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN,
    ) -> None:
        if dead_letter_maxlen < 0:
            raise ConfigError(f"dead_letter_maxlen must be >= 0, got {dead_letter_maxlen}")
        self.settings = settings
        self.retain_acked = retain_acked
        self.trim_interval = trim_interval
        self.dead_letter_maxlen = dead_letter_maxlen
        self._pool = _make_pool(settings, settings.socket_timeout)
        self._read_pool = _make_pool(settings, settings.read_timeout)
        self._client = Redis(connection_pool=self._pool)
        self._reader = Redis(connection_pool=self._read_pool)
        self._scripts = Scripts.register(self._client)
        self._presence = PresenceScripts.register(self._client)
        self._fair = FairScripts.register(self._client)
        self._raise_flag: AsyncScript = self._client.register_script(RAISE_FLAG)
        # Never resent on a connection error: XADD is not idempotent.
        self._writes = PipelineCoalescer(
            self._client, max_batch=max_batch, errors=chained_broker_error
        )
        self._closed = False  # no new work: consumers end, publish refuses
        self._io_closed = False  # connections released: settling fails too
        self._closed_future: asyncio.Future[None] | None = None
        self._consumers: set[Any] = set()  # _redis_consumer.ConsumerLoop

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStreamsBroker:
        """A broker for ``url`` (see ``RedisSettings.from_uri``).

        ``kwargs`` are ``RedisSettings`` fields (``max_connections``, ``read_timeout``, ...)
        and this class's keyword arguments (``retain_acked``, ``trim_interval``,
        ``max_batch``, ``dead_letter_maxlen``).
        """
        fields = {f.name for f in attrs.fields(RedisSettings)}
        own = {"retain_acked", "trim_interval", "max_batch", "dead_letter_maxlen"}
        unknown = sorted(kwargs.keys() - fields - own)
        if unknown:
            raise ConfigError(f"unknown Redis broker option(s): {', '.join(unknown)}")
        settings_kwargs = {k: v for k, v in kwargs.items() if k in fields}
        broker_kwargs = {k: v for k, v in kwargs.items() if k in own}
        return cls(RedisSettings.from_uri(url, **settings_kwargs), **broker_kwargs)

    def __repr__(self) -> str:
        return f"<RedisStreamsBroker {self.settings.masked_url}>"

    # -- Broker protocol -------------------------------------------------------------

    async def publish(
        self,
        stream: str,
        message: Message,
        *,
        key: str | None = None,
        priority: Priority = "normal",
    ) -> str:
        self._check_open()
        check_fair(key, priority)
        if key is not None:
            flat: list[Any] = [key, priority]
            for name, value in encode_fields(message).items():
                flat += (name, value)
            return _text(await self._eval(self._fair.publish, [stream], flat))
        args: list[Any] = ["XADD", stream, "*"]
        for name, value in encode_fields(message).items():
            args += (name, value)
        return _text(await self._writes.call(*args))

    async def ensure_group(self, stream: str, group: str) -> None:
        self._check_open()
        try:
            with mapped_errors():
                await self._client.xgroup_create(stream, group, id="0", mkstream=True)
        except BrokerError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        options: ConsumeOptions | None = None,
    ) -> AsyncGenerator[Delivery, None]:
        from ._redis_consumer import ConsumerLoop  # the loop imports this module

        options = options or ConsumeOptions()
        limit = self.settings.read_timeout - BLOCK_MARGIN
        if options.block > limit:
            raise ConfigError(
                f"ConsumeOptions.block={options.block}s must be at most read_timeout - "
                f"{BLOCK_MARGIN}s = {limit}s, or redis-py times out on an idle stream"
            )
        return ConsumerLoop(self, stream, group, consumer, options).run()

    async def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle: float, count: int = 100
    ) -> list[Delivery]:
        found = await claim(self, stream, group, consumer, min_idle, count, None)
        return list(found)

    async def pending_count(self, stream: str, group: str) -> int:
        self._check_open()
        try:
            with mapped_errors():
                summary = await self._client.xpending(stream, group)
        except BrokerError as exc:
            if is_nogroup(exc.__cause__ or exc):
                return 0
            raise
        return int(summary["pending"])

    async def backlog(self, stream: str, group: str) -> int:
        self._check_open()
        with mapped_errors():
            if not await self._client.exists(stream):
                parked: int = await self._client.zcard(delayed_key(stream))
                return parked + int(await self._client.get(waiting_key(stream)) or 0)
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xinfo_groups(stream)
                pipe.zcard(delayed_key(stream))
                pipe.get(waiting_key(stream))
                groups, delayed, waiting = await pipe.execute()
            delayed = int(delayed) + int(waiting or 0)
            info = next((g for g in groups if _text(g["name"]) == group), None)
            if info is None:
                return delayed
            lag = info.get("lag")
            if lag is None:  # Redis 7 cannot tell after deletions: count by hand
                lag = await self._count_after(stream, _text(info["last-delivered-id"]))
        return int(lag) + int(delayed)

    async def queue_depths(self, stream: str, group: str) -> dict[str, int]:
        self._check_open()
        with mapped_errors():
            counts: list[Any] = await self._client.hmget(depth_key(stream), PRIORITIES)
        return {p: max(0, int(c or 0)) for p, c in zip(PRIORITIES, counts, strict=True)}

    async def waiting_keys(self, stream: str, top: int = 10) -> dict[str, int]:
        self._check_open()
        check_top(top)
        with mapped_errors():
            rows: Any = await self._client.zrevrange(
                waiting_keys_key(stream), 0, top - 1, withscores=True
            )
        return {_text(key): int(score) for key, score in rows}

    async def dead_letters(
        self, stream: str, count: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        self._check_open()
        start = "-"
        if after is not None:
            check_entry_id(after)
            start = f"({after}"
        with mapped_errors():
            entries: Any = await self._client.xrange(
                dead_letter_stream(stream), min=start, count=count
            )
        return [read_dead_letter(_text(entry_id), fields) for entry_id, fields in entries or []]

    async def remove_dead_letter(self, stream: str, entry_id: str) -> bool:
        self._check_open()
        check_entry_id(entry_id)
        removed = await self._writes.call("XDEL", dead_letter_stream(stream), entry_id)
        return int(removed) > 0

    async def purge_dead_letters(self, stream: str, older_than: float | None = None) -> int:
        self._check_open()
        check_age(older_than)
        older_ms = -1 if older_than is None else int(older_than * 1000)
        removed = await self._eval(
            self._scripts.purge_dead, [dead_letter_stream(stream)], [older_ms]
        )
        return int(removed)

    async def announce(
        self, group: str, member: str, payload: Mapping[str, Any], ttl: float
    ) -> None:
        self._check_open()
        check_ttl(ttl)
        encoded = encode_payload(payload)
        ttl_ms = max(1, round(ttl * 1000))
        await self._eval(self._presence.announce, presence_keys(group), [member, ttl_ms, encoded])

    async def withdraw(self, group: str, member: str) -> None:
        self._check_open()
        await self._eval(self._presence.withdraw, presence_keys(group), [member])

    async def members(self, group: str) -> dict[str, dict[str, Any]]:
        self._check_open()
        flat = await self._eval(self._presence.members, presence_keys(group), [])
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(flat), 2):
            member = _text(flat[i])
            payload = decode_payload(group, member, flat[i + 1])
            if payload is not None:
                found[member] = payload
        return found

    async def raise_flag(self, group: str, name: str, ttl: float) -> None:
        self._check_open()
        check_flag(name, ttl)
        ttl_ms = max(1, int(ttl * 1000))
        await self._eval(
            self._raise_flag, [flag_key(group, name)], [ttl_ms, flag_channel(group), name]
        )

    async def raised_flags(self, group: str, names: Collection[str]) -> set[str]:
        self._check_open()
        ordered = list(dict.fromkeys(names))
        if not ordered:
            return set()
        values = await self._writes.call("MGET", *(flag_key(group, n) for n in ordered))
        return {name for name, value in zip(ordered, values, strict=True) if value is not None}

    async def watch_flags(self, group: str) -> AsyncGenerator[str, None]:
        self._check_open()
        watcher = watch_channel(self._reader, flag_channel(group), lambda: self._closed)
        try:
            async for name in watcher:
                yield name
        finally:
            await watcher.aclose()

    async def ping(self) -> None:
        self._check_open()
        with mapped_errors():
            await self._client.ping()

    async def check_server(self) -> str:
        """The server's version; ``ConfigError`` when it is older than ``MIN_REDIS_VERSION``
        (the adapter needs XAUTOCLAIM, XTRIM MINID and Redis 7's script semantics; an older
        server fails later, task by task, with "unknown command"). ``BrokerUnavailable``
        when it does not answer."""
        self._check_open()
        with mapped_errors():
            info: Any = await self._client.info("server")
        version = str(info.get("redis_version", ""))
        numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        if len(numbers) == 2 and numbers < MIN_REDIS_VERSION:
            wanted = ".".join(map(str, MIN_REDIS_VERSION))
            raise ConfigError(
                f"REDIS_URI: {self.settings.masked_url} runs Redis {version}; "
                f"ai-orchestrator needs Redis {wanted} or newer"
            )
        return version

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)
        for loop in list(self._consumers):
            await loop.shutdown()
        await self._writes.drain()
        await self._client.aclose()
        await self._reader.aclose()
        await self._pool.aclose()
        await self._read_pool.aclose()
        self._io_closed = True

    # -- beyond the protocol ----------------------------------------------------------

    async def trim(self, stream: str) -> int:
        """Drop the entries no group needs any more, and the dead letters past
        ``dead_letter_maxlen`` (see the module docstring); returns the former's count."""
        self._check_open()
        retain_ms = int(self.retain_acked * 1000)
        result = await self._eval(self._scripts.trim, [stream], [retain_ms])
        if self.dead_letter_maxlen:
            await self._writes.call(
                "XTRIM", dead_letter_stream(stream), "MAXLEN", self.dead_letter_maxlen
            )
        return int(result)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def closed_for_io(self) -> bool:
        return self._io_closed

    # -- used by deliveries and the consumer loop --------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("the broker is closed")

    def _check_io(self) -> None:
        if self._io_closed:
            raise BrokerUnavailable("the broker is closed")

    def _closed_signal(self) -> asyncio.Future[None]:
        if self._closed_future is None:
            self._closed_future = asyncio.get_running_loop().create_future()
            if self._closed:
                self._closed_future.set_result(None)
        return self._closed_future

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` through the write coalescer (EVALSHA; loads it if Redis lost it)."""
        self._check_io()
        sha = script.sha
        try:
            return await self._writes.call("EVALSHA", sha, len(keys), *keys, *args)
        except BrokerError as exc:
            if not isinstance(exc.__cause__, rexc.NoScriptError):
                raise
        with mapped_errors():
            await self._client.script_load(script.script)
        return await self._writes.call("EVALSHA", sha, len(keys), *keys, *args)

    async def _ack(self, stream: str, group: str, entry_id: str) -> None:
        self._check_io()
        await self._writes.call("XACK", stream, group, entry_id)

    async def _nack(self, delivery: RedisDelivery, delay: float, prior: int) -> None:
        d = delivery
        if d.key is not None:  # back to its key's waiting room
            result = _text(
                await self._eval(
                    self._fair.nack,
                    [d.stream, dead_letter_stream(d.stream)],
                    [d.group, d.entry_id, d.consumer, int(delay * 1000), prior],
                )
            )
        else:
            result = _text(
                await self._eval(
                    self._scripts.nack,
                    [d.stream, delayed_key(d.stream), dead_letter_stream(d.stream)],
                    [d.group, d.entry_id, d.consumer, int(delay * 1000), prior],
                )
            )
        if result == "LOST":
            raise LeaseLost(f"entry {d.entry_id} is no longer pending for {d.consumer}")
        if result == "DELETED":
            logger.warning(
                "entry %s of %s was deleted while pending; recorded in %s",
                d.entry_id,
                d.stream,
                dead_letter_stream(d.stream),
            )

    async def _dead_letter(self, delivery: RedisDelivery, reason: str) -> None:
        await self._dead_letter_entry(
            delivery.stream,
            delivery.group,
            delivery.consumer,
            delivery.entry_id,
            reason,
            delivery.delivery_count,
            key=delivery.key,
        )

    # -- keyed entries (see _redis_fair) -----------------------------------------------

    async def _ack_keyed(self, delivery: RedisDelivery) -> None:
        """XACK, and give the entry's share of its key's cap back, in one script."""
        d = delivery
        assert d.key is not None
        await self._eval(
            self._fair.ack,
            [d.stream, run_key(d.stream, d.key), capped_key(d.stream)],
            [d.group, d.entry_id, d.key],
        )

    async def _promote_dispatch(
        self, stream: str, consumer: str, options: ConsumeOptions, count: int | None
    ) -> float | None:
        """Move due delayed entries back, and up to ``count`` (default: a batch) keyed
        entries from the waiting room; returns seconds until the next delayed one is due."""
        n = options.batch_size if count is None else count
        wait_ms, _ = await self._eval(
            self._fair.turn,
            [stream, delayed_key(stream)],
            [
                options.batch_size,
                n,
                consumer,
                int(options.block * 1000),
                fairness_arg(options.fairness or Fairness(), options.lease),
                0 if options.fairness is None else 1,
            ],
        )
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000

    async def _keyed(
        self, deliveries: list[RedisDelivery], options: ConsumeOptions, *, claimed: bool
    ) -> list[RedisDelivery]:
        """Mark the keyed deliveries whose key has a cap; a claimed (or own-PEL) one counts
        as running again (the dispatch counted a fresh one)."""
        renew: list[RedisDelivery] = []
        for delivery in deliveries:
            fairness = options.fairness
            if delivery.key is not None and fairness and fairness.cap(delivery.key) is not None:
                delivery.capped = True
                renew.append(delivery)
        if claimed and renew:
            await self._renew_running(deliveries[0].stream, options.lease, renew, existing=False)
        return deliveries

    async def _renew_running(
        self,
        stream: str,
        lease: float,
        deliveries: list[RedisDelivery],
        *,
        existing: bool = True,
    ) -> None:
        """Push the lease expiry of capped keyed ``deliveries`` in their keys' running sets."""
        pairs: list[Any] = []
        for d in deliveries:
            if d.capped and d.key is not None and not d.settled:
                pairs += (d.key, d.entry_id)
        for i in range(0, len(pairs), 2 * _EXTEND_CHUNK):
            await self._eval(
                self._fair.renew,
                [stream],
                [round(lease * 1000), 1 if existing else 0, *pairs[i : i + 2 * _EXTEND_CHUNK]],
            )

    async def _dead_letter_entry(
        self,
        stream: str,
        group: str,
        consumer: str,
        entry_id: str,
        reason: str,
        count: int,
        *,
        key: str | None = None,
    ) -> None:
        """Dead-letter a pending entry; a keyed one gives its share of its key's cap back in
        the same script (a no-op for a key without a cap)."""
        keys = [stream, dead_letter_stream(stream)]
        args: list[Any] = [group, entry_id, consumer, reason, count]
        if key is not None:
            keys += (run_key(stream, key), capped_key(stream))
            args.append(key)
        result = _text(await self._eval(self._scripts.dead_letter, keys, args))
        if result == "LOST":
            raise LeaseLost(f"entry {entry_id} is no longer pending for {consumer}")

    async def _extend(self, stream: str, group: str, consumer: str, ids: list[str]) -> list[str]:
        """Renew ``ids`` for ``consumer`` in batched atomic calls; returns the lost ones."""
        calls = [
            self._eval(
                self._scripts.extend, [stream], [group, consumer, *ids[i : i + _EXTEND_CHUNK]]
            )
            for i in range(0, len(ids), _EXTEND_CHUNK)
        ]
        results = await asyncio.gather(*calls)
        return [_text(entry_id) for lost in results for entry_id in lost]

    async def _promote(self, stream: str, limit: int) -> float | None:
        """Move due delayed entries back; returns seconds until the next is due, if any."""
        _, wait_ms = await self._eval(self._scripts.promote, [stream, delayed_key(stream)], [limit])
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000

    async def _count_after(self, stream: str, last_id: str, cap: int = 100_000) -> int:
        """Entries after ``last_id`` (bounded; a lower bound past ``cap``)."""
        total, start = 0, f"({last_id}"
        while total < cap:
            page: Any = await self._client.xrange(stream, min=start, count=1000)
            total += len(page)
            if len(page) < 1000:
                break
            start = f"({_text(page[-1][0])}"
        return total


async def check_supported_server(broker: object, timeout: float = 2.0) -> None:
    """At startup: ``ConfigError`` when ``broker`` (an adapter, not a wrapper) is a Redis
    Streams broker on a server too old for it; anything else passes. A server that does not
    answer yet passes too: the service says so and keeps trying."""
    if not isinstance(broker, RedisStreamsBroker):
        return
    try:
        async with asyncio.timeout(timeout):
            await broker.check_server()
    except (BrokerUnavailable, TimeoutError):
        return


def _make_pool(settings: RedisSettings, socket_timeout: float) -> BlockingConnectionPool:
    return BlockingConnectionPool(
        connection_class=SSLConnection if settings.tls else Connection,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=socket_timeout,
        # One immediate retry on a broken connection (e.g. the pool's sockets after a
        # Redis restart); never a long loop, so callers learn of an outage at once.
        retry=Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
    )


__all__ = [
    "MIN_REDIS_VERSION",
    "RedisDelivery",
    "RedisStreamsBroker",
    "check_supported_server",
    "delayed_key",
]
