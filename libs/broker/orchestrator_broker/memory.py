"""An in-memory broker with the semantics of Redis Streams consumer groups.

It backs the test suites and the single-process mode (no ``REDIS_URI``); nothing survives
the process.

It keeps what Redis keeps: per stream an append-only log (trimmed once every group has
read it) with ids of the form ``"<ms>-<seq>"``; per group a last-delivered position and a
pending entries list (owner, delivery count, last delivery time on the monotonic clock);
plus, per group, a queue of nacked entries waiting out their delay. Messages are stored as
stream fields through ``encode_fields``/``decode_fields``, exactly as on Redis, so
``publish_raw`` can plant a corrupt or foreign entry. Everything runs on one event loop;
waiting consumers sleep on an event that publishes, nacks and ``close()`` wake, never in a
polling loop. Presence members expire on the monotonic clock; payloads are kept as JSON, as
on Redis, so what ``members`` returns is always a fresh copy.

Keyed entries (``publish(..., key=...)``) wait in a per-stream ``WaitingRoom``
(``_memory_fair``) and are appended to the log one at a time when a consumer has read
everything else, so they are scheduled as on Redis: fair shares, priorities, aging and caps
(a key's running entries are its pending ones whose lease has not run out).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncGenerator, Collection, Mapping
from typing import Any

import attrs

from ._dead_letters import (
    DEAD_CONSUMER,
    DEAD_DELIVERY_COUNT,
    DEAD_ENTRY_ID,
    DEAD_FIELDS,
    DEAD_GROUP,
    DEAD_REASON,
    check_age,
    check_entry_id,
    read_dead_letter,
)
from ._fair import FAIR_ENQUEUED, FAIR_FIELDS, FAIR_KEY, FAIR_PRIORITY, check_fair, check_top
from ._flags import SUBSCRIBED, check_flag
from ._memory_fair import WaitingEntry, WaitingRoom
from ._presence import check_ttl, decode_payload, encode_payload
from .errors import AlreadySettled, BrokerUnavailable, ConfigError, DecodeError, LeaseLost
from .message import Message, decode_fields, encode_fields
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

__all__ = ["MemoryBroker", "MemoryDelivery"]

_Fields = dict[bytes | str, bytes | str]

#: Read entries a stream keeps before it drops them (see ``_Stream.trim``).
_TRIM_AT = 1024


def _text(value: bytes | str) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


class _Signal:
    """Wakes every waiter at once; a waiter grabs the current event before it sleeps."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0.0)):
                await event.wait()


@attrs.define(eq=False)
class _Keeper:
    """One consume() iterator's hold on its deliveries.

    With ``auto_extend`` they never go idle while the iterator is open (the adapter for
    Redis renews them every ``lease / 3``); a reclaim pass of the iterator skips its own.
    """

    auto_extend: bool
    active: bool = True
    held: set[str] = attrs.field(factory=set)


@attrs.define(eq=False)
class _Pending:
    entry_id: str
    fields: _Fields
    message: Message
    consumer: str
    count: int
    last_delivery: float
    keeper: _Keeper | None = None
    key: str | None = None  # a keyed entry's key

    def idle(self, now: float) -> float:
        if self.keeper is not None and self.keeper.active and self.keeper.auto_extend:
            return 0.0  # auto-extended: renewed every lease / 3, so never idle past the lease
        return now - self.last_delivery


@attrs.define(eq=False)
class _Delayed:
    entry_id: str
    fields: _Fields
    message: Message
    count: int


@attrs.define(eq=False)
class _Group:
    next_index: int  # absolute position of the first entry not yet delivered
    pel: dict[str, _Pending] = attrs.field(factory=dict)
    delayed: list[tuple[float, int, _Delayed]] = attrs.field(factory=list)  # a heap by due time


@attrs.define(eq=False)
class _Stream:
    log: list[tuple[str, _Fields]] = attrs.field(factory=list)
    base: int = 0  # absolute position of log[0]; what is before it was trimmed
    last_id: tuple[int, int] = (0, 0)
    groups: dict[str, _Group] = attrs.field(factory=dict)
    signal: _Signal = attrs.field(factory=_Signal)
    room: WaitingRoom = attrs.field(factory=WaitingRoom)
    # key -> ids of its entries made pending (settled ones are pruned when counted)
    running: dict[str, set[str]] = attrs.field(factory=dict)

    @property
    def end(self) -> int:
        return self.base + len(self.log)

    def group(self, name: str) -> _Group:
        """The group, created at the first retained entry if missing."""
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = _Group(next_index=self.base)
        return group

    def trim(self) -> None:
        """Drop entries every group has read, once they are many (amortized O(1)).

        Pending and delayed entries carry their own fields, so only undelivered entries
        are needed. A stream without groups keeps everything (nobody has read it yet), as
        the Redis adapter's trim does; so does a dead-letter stream until a group reads it.
        """
        if not self.groups:
            return
        low = min(g.next_index for g in self.groups.values())
        drop = low - self.base
        if drop >= _TRIM_AT and drop * 2 >= len(self.log):
            del self.log[:drop]
            self.base = low

    def drop_oldest(self, keep: int, slack: int) -> None:
        """Keep the newest ``keep`` entries once there are more than ``keep + slack`` (like
        ``XTRIM MAXLEN``: entries no group has read are dropped too)."""
        excess = len(self.log) - keep
        if excess <= slack:
            return
        del self.log[:excess]
        self.base += excess
        for group in self.groups.values():
            group.next_index = max(group.next_index, self.base)

    def remove(self, entry_id: str) -> bool:
        """Delete one entry, like ``XDEL`` (groups that have not read it yet never will)."""
        for index, (candidate, _) in enumerate(self.log):
            if candidate == entry_id:
                del self.log[index]
                position = self.base + index
                for group in self.groups.values():
                    if group.next_index > position:
                        group.next_index -= 1
                return True
        return False

    def drop_before(self, entry_id: tuple[int, int]) -> int:
        """Delete the entries older than ``entry_id``, like ``XTRIM MINID``; how many went."""
        count = 0
        while count < len(self.log) and _id_key(self.log[count][0]) < entry_id:
            count += 1
        if count:
            del self.log[:count]
            self.base += count
            for group in self.groups.values():
                group.next_index = max(group.next_index, self.base)
        return count

    def next_id(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self.last_id
        self.last_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self.last_id[0]}-{self.last_id[1]}"


@attrs.define(eq=False)
class MemoryDelivery:
    """One message handed to one consumer of a ``MemoryBroker``; settle it exactly once."""

    _broker: MemoryBroker
    message: Message
    stream: str
    group: str
    consumer: str
    entry_id: str
    delivery_count: int
    _settled: bool = False

    @property
    def settled(self) -> bool:
        return self._settled

    def _settle(self) -> None:
        self._broker._check_open()
        if self._settled:
            raise AlreadySettled(f"delivery {self.entry_id} of {self.stream} is settled already")
        self._settled = True

    async def ack(self) -> None:
        self._settle()
        self._broker._ack(self)

    async def nack(self, delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError(f"delay must not be negative, got {delay!r}")
        self._settle()
        self._broker._nack(self, delay)

    async def defer(self, delay: float) -> None:
        if delay < 0:
            raise ValueError(f"delay must not be negative, got {delay!r}")
        self._settle()
        self._broker._nack(self, delay, counted=False)

    async def dead_letter(self, reason: str) -> None:
        self._settle()
        self._broker._dead_letter_delivery(self, reason)

    async def extend_lease(self) -> None:
        self._broker._check_open()
        if self._settled:
            raise AlreadySettled(f"delivery {self.entry_id} of {self.stream} is settled already")
        self._broker._extend(self)


class MemoryBroker:
    """A ``Broker`` kept in process memory: same contract as Redis Streams, no durability."""

    def __init__(self, *, dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN) -> None:
        if dead_letter_maxlen < 0:
            raise ConfigError(f"dead_letter_maxlen must be >= 0, got {dead_letter_maxlen}")
        #: Dead letters kept per stream (0: all); a tenth more may be held between trims.
        self.dead_letter_maxlen = dead_letter_maxlen
        self._streams: dict[str, _Stream] = {}
        # presence group -> member -> (expiry on the monotonic clock, JSON payload)
        self._presence: dict[str, dict[str, tuple[float, bytes]]] = {}
        # flag group -> name -> expiry on the monotonic clock; and each group's watchers
        self._flags: dict[str, dict[str, float]] = {}
        self._flag_watchers: dict[str, set[asyncio.Queue[str | None]]] = {}
        self._closed = False
        self._tiebreak = itertools.count()

    # -- the Broker protocol -------------------------------------------------------------

    async def publish(
        self,
        stream: str,
        message: Message,
        *,
        key: str | None = None,
        priority: Priority = "normal",
    ) -> str:
        check_fair(key, priority)
        if key is None:
            return await self.publish_raw(stream, encode_fields(message))
        self._check_open()
        st = self._stream(stream)
        now_ms = int(time.time() * 1000)
        fields: _Fields = {k: v for k, v in encode_fields(message).items()}
        st.room.push(WaitingEntry(fields, 0, key, priority, now_ms))
        st.signal.notify()
        return f"{now_ms}-{next(self._tiebreak)}"

    async def publish_raw(
        self, stream: str, fields: Mapping[str, bytes | str] | Mapping[bytes, bytes | str]
    ) -> str:
        """Append arbitrary stream fields, like a raw ``XADD``: for tests of foreign entries."""
        self._check_open()
        copied: _Fields = {k: v for k, v in fields.items()}
        return self._append(stream, copied)

    async def ensure_group(self, stream: str, group: str) -> None:
        self._check_open()
        self._stream(stream).group(group)

    async def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        options: ConsumeOptions | None = None,
    ) -> AsyncGenerator[Delivery, None]:
        opts = options or ConsumeOptions()
        if self._closed:
            return
        st = self._stream(stream)
        keeper = _Keeper(auto_extend=opts.auto_extend)
        # A restarted consumer first drains what its previous life left pending (in id order).
        own = deque(
            sorted(
                (e for e, p in self._group(st, group).pel.items() if p.consumer == consumer),
                key=_id_key,
            )
        )
        cursor = _Cursor(stream, group, consumer, opts, keeper, own)
        try:
            while not self._closed:
                # Yield to the loop before each read, as a network round trip would, so that
                # one busy consumer cannot starve the others. Nothing is fetched yet here, so
                # a cancellation at this point leaves no entry fetched but unyielded.
                await asyncio.sleep(0)
                if self._closed:
                    break
                delivery = self._next(st, cursor)
                if delivery is None:
                    await st.signal.wait(self._wait_time(st, cursor))
                    continue
                keeper.held.add(delivery.entry_id)
                yield delivery
        finally:
            # Deliveries fetched are yielded one at a time, so nothing fetched is left unyielded
            # here; the yielded ones stay pending but from now on their lease runs out.
            keeper.active = False
            now = time.monotonic()
            group_state = st.groups.get(group)
            for entry_id in keeper.held:
                pending = group_state.pel.get(entry_id) if group_state else None
                if pending is not None and pending.keeper is keeper:
                    pending.keeper = None
                    if keeper.auto_extend:  # the last renewal was (about) now
                        pending.last_delivery = now

    async def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle: float, count: int = 100
    ) -> list[Delivery]:
        self._check_open()
        st = self._stream(stream)
        g = self._group(st, group)
        now = time.monotonic()
        idle = sorted(
            (e for e, p in g.pel.items() if p.idle(now) >= min_idle),
            key=_id_key,
        )
        claimed: list[Delivery] = []
        for entry_id in idle:
            if len(claimed) >= count:
                break
            delivery = self._claim(st, stream, group, g.pel[entry_id], consumer, None, None)
            if delivery is not None:
                claimed.append(delivery)
        return claimed

    async def pending_count(self, stream: str, group: str) -> int:
        self._check_open()
        g = self._streams[stream].groups.get(group) if stream in self._streams else None
        return len(g.pel) if g else 0

    async def backlog(self, stream: str, group: str) -> int:
        self._check_open()
        st = self._streams.get(stream)
        g = st.groups.get(group) if st else None
        if st is None or g is None:
            return st.room.count if st else 0
        return st.end - g.next_index + len(g.delayed) + st.room.count

    async def queue_depths(self, stream: str, group: str) -> dict[str, int]:
        self._check_open()
        st = self._streams.get(stream)
        return {p: st.room.depths[p] if st else 0 for p in PRIORITIES}

    async def waiting_keys(self, stream: str, top: int = 10) -> dict[str, int]:
        self._check_open()
        check_top(top)
        st = self._streams.get(stream)
        return st.room.top_keys(top) if st else {}

    async def dead_letters(
        self, stream: str, count: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        self._check_open()
        if after is not None:
            check_entry_id(after)
        st = self._streams.get(dead_letter_stream(stream))
        if st is None:
            return []
        entries = st.log
        if after is not None:
            start = _id_key(after)
            entries = [(e, f) for e, f in entries if _id_key(e) > start]
        return [read_dead_letter(e, f) for e, f in entries[:count]]

    async def remove_dead_letter(self, stream: str, entry_id: str) -> bool:
        self._check_open()
        check_entry_id(entry_id)
        st = self._streams.get(dead_letter_stream(stream))
        return st is not None and st.remove(entry_id)

    async def purge_dead_letters(self, stream: str, older_than: float | None = None) -> int:
        self._check_open()
        check_age(older_than)
        st = self._streams.get(dead_letter_stream(stream))
        if st is None:
            return 0
        if older_than is None:
            return st.drop_before((2**63, 0))
        # Ids carry the wall clock in ms, as on Redis: drop those before now - older_than.
        return st.drop_before((int((time.time() - older_than) * 1000), 0))

    async def announce(
        self, group: str, member: str, payload: Mapping[str, Any], ttl: float
    ) -> None:
        self._check_open()
        check_ttl(ttl)
        encoded = encode_payload(payload)
        self._presence.setdefault(group, {})[member] = (time.monotonic() + ttl, encoded)

    async def withdraw(self, group: str, member: str) -> None:
        self._check_open()
        present = self._presence.get(group)
        if present is not None:
            present.pop(member, None)

    async def members(self, group: str) -> dict[str, dict[str, Any]]:
        self._check_open()
        present = self._presence.get(group)
        if not present:
            return {}
        now = time.monotonic()
        for member in [m for m, (expiry, _) in present.items() if expiry <= now]:
            del present[member]
        found: dict[str, dict[str, Any]] = {}
        for member, (_, encoded) in present.items():
            payload = decode_payload(group, member, encoded)
            if payload is not None:
                found[member] = payload
        return found

    async def raise_flag(self, group: str, name: str, ttl: float) -> None:
        self._check_open()
        check_flag(name, ttl)
        flags = self._flags.setdefault(group, {})
        now = time.monotonic()
        if len(flags) > 1024:  # expired ones go now and then, so the dict cannot grow forever
            for gone in [n for n, expiry in flags.items() if expiry <= now]:
                del flags[gone]
        flags[name] = now + ttl
        for queue in self._flag_watchers.get(group, ()):
            queue.put_nowait(name)

    async def raised_flags(self, group: str, names: Collection[str]) -> set[str]:
        self._check_open()
        flags = self._flags.get(group)
        if not flags:
            return set()
        now = time.monotonic()
        return {name for name in names if flags.get(name, now) > now}

    async def watch_flags(self, group: str) -> AsyncGenerator[str, None]:
        self._check_open()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        watchers = self._flag_watchers.setdefault(group, set())
        watchers.add(queue)
        try:
            yield SUBSCRIBED
            while not self._closed:
                name = await queue.get()
                if name is None:  # close()
                    return
                yield name
        finally:
            watchers.discard(queue)

    async def ping(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True
        for st in self._streams.values():
            st.signal.notify()
        for watchers in self._flag_watchers.values():
            for queue in watchers:
                queue.put_nowait(None)

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable("the memory broker is closed")

    def _stream(self, stream: str) -> _Stream:
        st = self._streams.get(stream)
        if st is None:
            st = self._streams[stream] = _Stream()
        return st

    @staticmethod
    def _group(st: _Stream, group: str) -> _Group:
        # consume() recreates a missing group (as the Redis adapter does after NOGROUP).
        return st.group(group)

    def _append(self, stream: str, fields: _Fields) -> str:
        st = self._stream(stream)
        entry_id = st.next_id()
        st.log.append((entry_id, fields))
        st.signal.notify()
        return entry_id

    def _next(self, st: _Stream, cur: _Cursor) -> MemoryDelivery | None:
        """The next delivery for ``cur`` in protocol order, or None if there is none yet."""
        g = self._group(st, cur.group)
        now = time.monotonic()
        while cur.own:  # 1. this consumer's own pending entries
            pending = g.pel.get(cur.own.popleft())
            if pending is not None and pending.consumer == cur.consumer:
                delivery = self._claim(
                    st,
                    cur.stream,
                    cur.group,
                    pending,
                    cur.consumer,
                    cur.keeper,
                    cur.options.max_deliveries,
                )
                if delivery is not None:
                    return delivery
        while g.delayed and g.delayed[0][0] <= now:  # 2. nacked entries whose delay is over
            _, _, delayed = heapq.heappop(g.delayed)
            delivery = self._deliver(
                st, cur, delayed.entry_id, delayed.fields, delayed.message, delayed.count + 1
            )
            if delivery is not None:
                return delivery
        if now >= cur.next_reclaim:  # 3. entries whose consumer stopped renewing its lease
            cur.next_reclaim = now + cur.options.effective_reclaim_interval
            cur.reclaimable = deque(
                sorted(
                    (
                        e
                        for e, p in g.pel.items()
                        if p.keeper is not cur.keeper and p.idle(now) >= cur.options.lease
                    ),
                    key=_id_key,
                )
            )
        while cur.reclaimable:
            pending = g.pel.get(cur.reclaimable.popleft())
            if (
                pending is not None
                and pending.keeper is not cur.keeper
                and pending.idle(now) >= cur.options.lease
            ):
                delivery = self._claim(
                    st,
                    cur.stream,
                    cur.group,
                    pending,
                    cur.consumer,
                    cur.keeper,
                    cur.options.max_deliveries,
                )
                if delivery is not None:
                    return delivery
        while g.next_index < st.end or self._dispatch(st, cur):  # 4. new entries
            entry_id, fields = st.log[g.next_index - st.base]
            g.next_index += 1
            if g.next_index - st.base >= _TRIM_AT:
                st.trim()
            try:
                message, prior = decode_fields(fields)
            except DecodeError as exc:
                self._write_dead_letter(
                    cur.stream,
                    cur.group,
                    entry_id,
                    fields,
                    f"undecodable entry: {exc}",
                    1,
                    cur.consumer,
                )
                continue
            delivery = self._deliver(st, cur, entry_id, fields, message, prior + 1)
            if delivery is not None:
                return delivery
        return None

    def _wait_time(self, st: _Stream, cur: _Cursor) -> float:
        now = time.monotonic()
        wait = min(cur.options.block, cur.next_reclaim - now)
        g = st.groups.get(cur.group)
        if g is not None and g.delayed:
            wait = min(wait, g.delayed[0][0] - now)
        due = st.room.next_due()
        if due is not None:
            wait = min(wait, due - now)
        return wait

    def _dispatch(self, st: _Stream, cur: _Cursor) -> bool:
        """Append the next keyed entry (fair share, priority, caps) to the log, if any."""
        if not st.room.count:
            return False
        g = self._group(st, cur.group)
        lease = cur.options.lease

        def running(key: str) -> int:
            ids = st.running.get(key)
            if not ids:
                return 0
            now = time.monotonic()
            gone = {e for e in ids if e not in g.pel}
            ids -= gone
            if not ids:
                del st.running[key]
            return sum(1 for e in ids if g.pel[e].idle(now) < lease)

        entry = st.room.dispatch(cur.options.fairness or Fairness(), running)
        if entry is None:
            return False
        self._append_keyed(st, entry)
        return True

    @staticmethod
    def _append_keyed(st: _Stream, entry: WaitingEntry) -> None:
        fields = dict(entry.fields)
        if entry.prior:
            fields["prior_deliveries"] = str(entry.prior)
        fields[FAIR_KEY] = entry.key
        fields[FAIR_PRIORITY] = entry.priority
        fields[FAIR_ENQUEUED] = str(entry.enqueued_ms)
        st.log.append((st.next_id(), fields))

    def _deliver(
        self,
        st: _Stream,
        cur: _Cursor,
        entry_id: str,
        fields: _Fields,
        message: Message,
        count: int,
    ) -> MemoryDelivery | None:
        """Make ``entry_id`` pending for ``cur`` (or dead-letter it past max deliveries)."""
        if count > cur.options.max_deliveries:
            self._write_dead_letter(
                cur.stream,
                cur.group,
                entry_id,
                fields,
                _too_many(cur.options.max_deliveries),
                count - 1,
                cur.consumer,
            )
            return None
        g = self._group(st, cur.group)
        key = fields.get(FAIR_KEY)
        if key is not None:
            key = _text(key)
            st.running.setdefault(key, set()).add(entry_id)
        g.pel[entry_id] = _Pending(
            entry_id, fields, message, cur.consumer, count, time.monotonic(), cur.keeper, key
        )
        return MemoryDelivery(self, message, cur.stream, cur.group, cur.consumer, entry_id, count)

    def _claim(
        self,
        st: _Stream,
        stream: str,
        group: str,
        pending: _Pending,
        consumer: str,
        keeper: _Keeper | None,
        max_deliveries: int | None,
    ) -> MemoryDelivery | None:
        """Hand a pending entry (again) to ``consumer`` with its count raised by one."""
        g = self._group(st, group)
        if max_deliveries is not None and pending.count + 1 > max_deliveries:
            del g.pel[pending.entry_id]
            self._write_dead_letter(
                stream,
                group,
                pending.entry_id,
                pending.fields,
                _too_many(max_deliveries),
                pending.count,
                consumer,
            )
            return None
        pending.consumer = consumer
        pending.count += 1
        pending.last_delivery = time.monotonic()
        pending.keeper = keeper
        return MemoryDelivery(
            self, pending.message, stream, group, consumer, pending.entry_id, pending.count
        )

    def _pending_of(self, delivery: MemoryDelivery) -> _Pending | None:
        st = self._streams.get(delivery.stream)
        g = st.groups.get(delivery.group) if st else None
        return g.pel.get(delivery.entry_id) if g else None

    # ``ack`` is XACK: it acks the entry if it is still pending, whoever holds it now, and is
    # harmless if it is not. ``nack``, ``dead_letter`` and ``extend_lease`` act only on an
    # entry still pending for this consumer, and raise ``LeaseLost`` (changing nothing)
    # otherwise, so a stalled consumer cannot requeue or bury work another one took over.

    def _ack(self, delivery: MemoryDelivery) -> None:
        pending = self._pending_of(delivery)
        if pending is not None:
            st = self._streams[delivery.stream]
            del st.groups[delivery.group].pel[delivery.entry_id]
            if pending.key is not None:
                st.signal.notify()  # its key may be under its cap again

    def _owned(self, delivery: MemoryDelivery) -> _Pending:
        pending = self._pending_of(delivery)
        if pending is None or pending.consumer != delivery.consumer:
            raise LeaseLost(
                f"delivery {delivery.entry_id} of {delivery.stream} is no longer pending "
                f"for {delivery.consumer!r}"
            )
        return pending

    def _nack(self, delivery: MemoryDelivery, delay: float, *, counted: bool = True) -> None:
        pending = self._owned(delivery)
        st = self._streams[delivery.stream]
        del st.groups[delivery.group].pel[delivery.entry_id]
        due = time.monotonic() + delay
        # The redelivery adds one to the count: an uncounted hand-back takes it off first.
        count = pending.count if counted else pending.count - 1
        if pending.key is not None:  # back to its key's waiting room, at the front
            st.room.delay(_waiting(pending, count), due)
            st.signal.notify()
            return
        waiting = _Delayed(pending.entry_id, pending.fields, pending.message, count)
        heapq.heappush(st.groups[delivery.group].delayed, (due, next(self._tiebreak), waiting))
        st.signal.notify()  # waiting consumers recompute how long to sleep

    def _dead_letter_delivery(self, delivery: MemoryDelivery, reason: str) -> None:
        pending = self._owned(delivery)
        del self._streams[delivery.stream].groups[delivery.group].pel[delivery.entry_id]
        self._write_dead_letter(
            delivery.stream,
            delivery.group,
            delivery.entry_id,
            pending.fields,
            reason,
            delivery.delivery_count,
            delivery.consumer,
        )
        if pending.key is not None:
            self._streams[delivery.stream].signal.notify()

    def _extend(self, delivery: MemoryDelivery) -> None:
        self._owned(delivery).last_delivery = time.monotonic()

    def _write_dead_letter(
        self,
        stream: str,
        group: str,
        entry_id: str,
        fields: _Fields,
        reason: str,
        delivery_count: int,
        consumer: str,
    ) -> None:
        # The same layout as the Redis adapter: the original fields as they were, then ours.
        record: _Fields = {k: v for k, v in fields.items() if _text(k) not in DEAD_FIELDS}
        record.update(
            {
                DEAD_REASON: reason,
                DEAD_ENTRY_ID: entry_id,
                DEAD_GROUP: group,
                DEAD_DELIVERY_COUNT: str(delivery_count),
                DEAD_CONSUMER: consumer,
            }
        )
        dead = dead_letter_stream(stream)
        self._append(dead, record)
        cap = self.dead_letter_maxlen
        if cap:
            self._streams[dead].drop_oldest(cap, slack=cap // 10)


@attrs.define(eq=False)
class _Cursor:
    """Where one consume() iterator stands."""

    stream: str
    group: str
    consumer: str
    options: ConsumeOptions
    keeper: _Keeper
    own: deque[str]
    next_reclaim: float = 0.0
    reclaimable: deque[str] = attrs.field(factory=deque)


def _too_many(max_deliveries: int) -> str:
    return f"exceeded max deliveries ({max_deliveries})"


def _waiting(pending: _Pending, prior: int) -> WaitingEntry:
    """A pending keyed entry as it goes back to the waiting room, ``prior`` deliveries made."""
    fields = pending.fields
    base: _Fields = {
        k: v for k, v in fields.items() if _text(k) not in FAIR_FIELDS and k != "prior_deliveries"
    }
    priority = _text(fields.get(FAIR_PRIORITY, "normal"))
    enqueued = _text(fields.get(FAIR_ENQUEUED, "0"))
    assert pending.key is not None
    return WaitingEntry(
        base,
        prior,
        pending.key,
        priority if priority in ("high", "low") else "normal",  # type: ignore[arg-type]
        int(enqueued) if enqueued.isdigit() else 0,
    )
