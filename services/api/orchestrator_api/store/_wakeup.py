"""Live waiting across API replicas: one pub/sub connection per store wakes local waiters.

The replica that applies a result event is often not the one streaming that task to a
client. ``APPLY`` publishes on the task's wake channel; each process holds one subscriber
connection, subscribed to exactly the channels its local waiters watch (so a replica only
hears about tasks it streams), and sets their events. A waiter then re-reads the log: the
message carries nothing, so a lost or duplicate wake-up costs a read, never an event.

A watch returns only once Redis confirmed the subscription, so anything appended after the
waiter's next log read is certain to wake it. A message's payload starts with ``t`` when the
change it announces ends the task (its terminal event, a cancel, a discard); a
waiter that wants only the end (a non-streamed answer) watches with ``end_only`` and sleeps
through the deltas instead of re-reading the log for each. (A message from an older API
that publishes only empty payloads wakes no such waiter: it then reads when its wait times
out, late but never wrong.) A channel stays subscribed ``linger`` seconds
after its last waiter left: a streaming client calls ``events()`` again right after each
batch, and should find its subscription still there instead of paying a round trip (and the
server a SUBSCRIBE/UNSUBSCRIBE pair) per event. Confirmations are matched to the SUBSCRIBE that
asked for them (Redis answers commands in order), never to an older one. When the
connection drops, every waiter is woken (to re-read what it may have missed) and the
subscriber reconnects with backoff and resubscribes; with no waiters left it stops.

``generation(channel)`` lets a reader skip a read that cannot find anything: a number that
changes with every message on a confirmed subscription, and is None while the channel is
not (or no longer) confirmed. Numbers come from one counter and are never reused, so one
seen before a read and seen again later means no message came in between, on a subscription
held all along: nothing was published on that channel, so nothing was appended.

The store's ``APPLY`` numbers its message with the id of the log entry it appended (``t12``,
``13``). The process that applied it hands the entry to its own readers at once
(``deliver``: it wakes them and changes the generation, as a message would) instead of
letting them wait for the message and then read the log; when the numbered message then
comes in, it is news to nobody here (``seen``) and changes nothing. A message without a
number (a cancel, a discard) always wakes and always counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from .errors import StoreUnavailable

__all__ = ["Wakeups"]

log = logging.getLogger(__name__)


class _Batch:
    """The waiters one SUBSCRIBE will confirm; closed to newcomers once an UNSUBSCRIBE follows."""

    __slots__ = ("futures", "joinable")

    def __init__(self, futures: list[asyncio.Future[None]] | None = None) -> None:
        self.futures: list[asyncio.Future[None]] = futures or []
        self.joinable = True


class Wakeups:
    """Per-channel wake-up events fed by one lazily started subscriber connection."""

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        confirm_timeout: float = 2.0,
        ping_interval: float = 10.0,
        linger: float = 5.0,
    ) -> None:
        self._connect = connect
        self._confirm_timeout = confirm_timeout
        self._ping_interval = ping_interval
        self._linger = linger
        self._waiters: dict[bytes, set[asyncio.Event]] = {}
        self._end_only: set[asyncio.Event] = set()  # waiters woken only by an ending message
        self._subscribed: set[bytes] = set()
        # per channel, one batch of futures per SUBSCRIBE sent and not yet confirmed
        self._unconfirmed: dict[bytes, deque[_Batch]] = {}
        self._conn: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._idle: dict[bytes, float] = {}  # subscribed channels without waiters, since when
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._counter = itertools.count(1)
        self._generations: dict[bytes, int] = {}  # confirmed channels only
        #: confirmed channels: the newest log entry id announced (or delivered) on each,
        #: and the generation that announcement made
        self._seen: dict[bytes, tuple[int, int]] = {}

    def generation(self, channel: str) -> int | None:
        """Changes with every message on ``channel``; None unless its subscription is
        confirmed (see the module docstring)."""
        key = channel.encode()
        return self._generations.get(key) if key in self._subscribed else None

    def deliver(self, channel: str, entry_id: int, *, ended: bool) -> None:
        """Wake this process's waiters on ``channel`` for log entry ``entry_id``, which this
        process appended (``ended``: it ends the task), and count it as seen, so its
        message, when it comes, changes nothing. Nothing to do when the channel is not
        confirmed, or when a message announced that entry or a later one already (the
        waiters heard of it through the message)."""
        key = channel.encode()
        if key in self._subscribed and self._announce(key, entry_id):
            self._wake(key, ended)

    def _announce(self, key: bytes, entry_id: int) -> bool:
        """Count a change on the confirmed channel ``key`` (a new generation), announcing
        log entry ``entry_id`` (0: none named); False, counting nothing, for an entry
        announced already."""
        if entry_id and entry_id <= self._seen.get(key, (0, 0))[0]:
            return False
        generation = self._generations[key] = next(self._counter)
        if entry_id:
            self._seen[key] = (entry_id, generation)
        return True

    def newest(self, channel: str) -> int | None:
        """The id of the newest log entry announced on ``channel``, if nothing else came in
        on it since that announcement (its generation is still the channel's); else None."""
        key = channel.encode()
        seen = self._seen.get(key)
        if seen is None or key not in self._subscribed or self._generations.get(key) != seen[1]:
            return None
        return seen[0]

    def _wake(self, key: bytes, ended: bool) -> None:
        for event in self._waiters.get(key, ()):
            if ended or event not in self._end_only:
                event.set()

    def prepare(self, channel: str) -> None:
        """Subscribe to ``channel`` ahead of its first waiter, in the background: once Redis
        confirms it, ``generation(channel)`` is a number, and the channel lingers as after
        a waiter left. Nothing is done for a channel subscribed, or being subscribed, already;
        a subscription that cannot be confirmed is given up (its waiter would subscribe)."""
        key = channel.encode()
        if self._closed or key in self._subscribed or key in self._waiters:
            return
        self._spawn(self._prepared(channel))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (cancelled by ``close``)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _prepared(self, channel: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            async with self.watch(channel):
                pass

    @contextlib.asynccontextmanager
    async def watch(self, channel: str, *, end_only: bool = False) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``channel`` is published to, from confirmation until exit
        (with ``end_only``: by a message that ends the task; and on a lost connection).

        Raises ``StoreUnavailable`` if the subscription cannot be confirmed in time.
        """
        if self._closed:
            raise StoreUnavailable("the task store is closed")
        key = channel.encode()
        event = asyncio.Event()
        self._idle.pop(key, None)
        waiters = self._waiters.setdefault(key, set())
        waiters.add(event)
        if end_only:
            self._end_only.add(event)
        try:
            await self._confirmed(key)
            yield event
        finally:
            waiters.discard(event)
            self._end_only.discard(event)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]
                self._idle[key] = asyncio.get_running_loop().time()
                if self._sweep_timer is None:
                    self._schedule_sweep(self._linger)

    def _schedule_sweep(self, delay: float) -> None:
        self._sweep_timer = asyncio.get_running_loop().call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """Unsubscribe (in one command) the channels idle for ``linger`` seconds.

        ``_idle`` is in the order channels went idle (a channel enters it only when its last
        waiter leaves, and leaves it when a waiter comes back), so the expired ones are its
        head: a sweep costs what it unsubscribes, not what still lingers (thousands, with
        hundreds of tasks a second). The next sweep waits at least a tenth of the linger,
        so the channels going idle in that time leave in one command."""
        self._sweep_timer = None
        now = asyncio.get_running_loop().time()
        expired: list[bytes] = []
        for key, since in self._idle.items():
            if now - since < self._linger:
                break
            expired.append(key)
        for key in expired:
            del self._idle[key]
            self._subscribed.discard(key)
            self._generations.pop(key, None)
            self._seen.pop(key, None)
            for batch in self._unconfirmed.get(key, ()):
                batch.joinable = False  # its SUBSCRIBE is undone by this UNSUBSCRIBE
        if expired:
            self._spawn(self._send("UNSUBSCRIBE", *expired))
        if self._idle:
            oldest = next(iter(self._idle.values()))
            self._schedule_sweep(max(oldest + self._linger - now, self._linger / 10))

    async def _confirmed(self, key: bytes) -> None:
        if key in self._subscribed:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batches = self._unconfirmed.setdefault(key, deque())
        if batches and batches[-1].joinable:
            batches[-1].futures.append(future)  # a SUBSCRIBE is on its way: it covers us
        else:
            batches.append(_Batch([future]))
            await self._send("SUBSCRIBE", key)  # no-op while disconnected: _run subscribes
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            async with asyncio.timeout(self._confirm_timeout):
                await future
        except TimeoutError:
            raise StoreUnavailable("Redis did not confirm the wake-up subscription") from None

    async def _send(self, *command: Any) -> None:
        conn = self._conn
        if conn is None or not conn.is_connected:
            return
        try:
            await conn.send_command(*command, check_health=False)
        except (RedisError, OSError):
            log.debug("wake-up subscriber: send failed; it reconnects", exc_info=True)

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closed and self._waiters:
            conn = self._connect()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                log.warning("wake-up subscriber cannot connect to Redis: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            try:
                await self._serve(conn)
            except (RedisError, OSError) as exc:
                log.warning("wake-up subscriber lost its Redis connection: %s", exc)
            finally:
                self._conn = None
                self._subscribed.clear()
                self._generations.clear()
                self._seen.clear()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                self._wake_all()

    async def _serve(self, conn: AbstractConnection) -> None:
        # A fresh connection: one SUBSCRIBE for every watched channel, owning all waiters.
        self._idle.clear()  # lingering channels are not subscribed here: nothing to undo
        self._unconfirmed = {
            key: deque([_Batch([f for b in self._unconfirmed.get(key, ()) for f in b.futures])])
            for key in self._waiters
        }
        self._conn = conn
        if self._waiters:
            await conn.send_command("SUBSCRIBE", *self._waiters, check_health=False)
        self._wake_all()  # whatever was appended while we were away
        unanswered_ping = False
        while not self._closed:
            reply = await conn.read_response(timeout=self._ping_interval)
            if reply is None:
                if unanswered_ping:
                    raise ConnectionError("Redis did not answer a PING on the subscriber")
                unanswered_ping = True
                await conn.send_command("PING", check_health=False)
                continue
            unanswered_ping = False
            self._handle(reply)

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind, key = reply[0], reply[1]
        if isinstance(key, str):
            key = key.encode()
        if kind in (b"message", "message"):
            payload = reply[2] if len(reply) > 2 else b""
            if isinstance(payload, str):
                payload = payload.encode()
            ended = payload.startswith(b"t")
            number = payload[1:] if ended else payload
            entry_id = int(number) if number.isdigit() else 0
            if key in self._generations and not self._announce(key, entry_id):
                return  # delivered here already: news to nobody
            self._wake(key, ended)
        elif kind in (b"subscribe", "subscribe"):
            batches = self._unconfirmed.get(key)
            if not batches:
                return
            batch = batches.popleft()
            for future in batch.futures:
                if not future.done():
                    future.set_result(None)
            if not batches:
                del self._unconfirmed[key]
                # the newest SUBSCRIBE answered and no UNSUBSCRIBE followed it
                if batch.joinable and (key in self._waiters or key in self._idle):
                    self._subscribed.add(key)
                    self._generations[key] = next(self._counter)

    async def close(self) -> None:
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for pending in list(self._background):
            pending.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake_all()
