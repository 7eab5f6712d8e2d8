"""The consume loop of the Redis adapter: one per ``consume()`` call.

Each turn: recreate the group if it was lost, promote due delayed entries, drain this
consumer's own PEL (at start and after an outage), reclaim expired leases every
``reclaim_interval``, trim every ``trim_interval``, and otherwise ``XREADGROUP BLOCK`` for
new entries (waking early when a delayed entry falls due or the broker closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncGenerator
from functools import partial
from typing import TYPE_CHECKING, Any

from ._redis_errors import is_nogroup, is_unavailable, mapped_errors
from ._redis_reads import build_deliveries, claim
from .errors import BrokerError, BrokerUnavailable, LeaseLost
from .protocol import ConsumeOptions, Delivery

if TYPE_CHECKING:
    from ._redis_delivery import RedisDelivery
    from ._redis_reads import RawEntry
    from .redis_streams import RedisStreamsBroker


def _cancel(future: asyncio.Future[Any], _signal: asyncio.Future[None]) -> None:
    future.cancel()


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # mark it retrieved


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


logger = logging.getLogger("orchestrator_broker.redis")

#: Reconnect backoff: doubles from the first value, capped, with jitter.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 3.0


class ConsumerLoop:
    """State of one consumer: its buffer, its unsettled deliveries, its outage."""

    def __init__(
        self,
        broker: RedisStreamsBroker,
        stream: str,
        group: str,
        consumer: str,
        options: ConsumeOptions,
    ) -> None:
        self.broker = broker
        self.stream, self.group, self.consumer = stream, group, consumer
        self.options = options
        self.buffer: deque[RedisDelivery] = deque()  # fetched, not yet yielded
        self.unsettled: dict[str, RedisDelivery] = {}  # fetched or yielded, not settled
        self.pel_cursor: str | None = "0"  # None once the own PEL is drained
        self.group_ready = False
        self.next_reclaim = 0.0
        #: When the next delayed entry falls due (monotonic; inf: none), as the last
        #: promotion found; None before the first.
        self.due_at: float | None = None
        self.next_trim = time.monotonic() + (broker.trim_interval or 0)
        self.failures = 0
        self.nogroup_streak = 0
        self.outage_since: float | None = None
        self.extender: asyncio.Task[None] | None = None

    async def run(self) -> AsyncGenerator[Delivery, None]:
        broker = self.broker
        if broker.closed:
            return
        broker._consumers.add(self)
        if self.options.auto_extend:
            self.extender = asyncio.create_task(self._extend_forever())
        try:
            while not broker.closed:
                _honour_swallowed_cancel()
                if not self.buffer:
                    await self._fill()
                    continue
                delivery = self.buffer.popleft()
                if delivery.lease_lost:
                    continue
                yield delivery
        finally:
            broker._consumers.discard(self)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop renewing leases and hand back what was fetched but never yielded."""
        if self.extender is not None:
            self.extender.cancel()
            await asyncio.wait({self.extender})  # unlike await, never eats our own cancel
            self.extender = None
        handed, self.buffer = list(self.buffer), deque()
        for delivery in handed:
            self.unsettled.pop(delivery.entry_id, None)
        if handed and not self.broker.closed_for_io:
            await self._hand_back(handed)

    async def _hand_back(self, deliveries: list[RedisDelivery]) -> None:
        # Back on the stream for immediate redelivery, with the count they had so far
        # (they were never yielded, so this fetch does not count).
        calls = [self.broker._nack(d, 0, d.delivery_count - 1) for d in deliveries]
        results = await asyncio.gather(*calls, return_exceptions=True)
        # LeaseLost: another consumer has it already, nothing to hand back.
        failed = sum(isinstance(r, Exception) and not isinstance(r, LeaseLost) for r in results)
        if failed:
            logger.warning(
                "could not hand back %d unyielded entries of %s; they return when their "
                "lease runs out",
                failed,
                self.stream,
            )

    # -- one turn ---------------------------------------------------------------------

    async def _fill(self) -> None:
        try:
            await self._turn()
        except BrokerError as exc:
            cause = exc.__cause__ or exc
            if is_nogroup(cause):
                await self._lost_group()
            elif isinstance(exc, BrokerUnavailable) or is_unavailable(cause):
                await self._outage(exc)
            else:
                raise
        else:
            self._recovered()

    async def _turn(self) -> None:
        broker, options = self.broker, self.options
        if not self.group_ready:
            await broker.ensure_group(self.stream, self.group)
            self.group_ready = True
        if options.fairness is None and self.pel_cursor is None and self.due_at is not None:
            # No fair dispatching to do for this consumer: the promotion of due delayed
            # entries (and of keyed ones, should any be published here) goes to Redis beside
            # this turn's read instead of a round trip before it. What it moves onto the
            # stream reaches this read or the next; the read blocks no longer than the
            # previous promotion said the next delayed entry is due. (A fair consumer's
            # dispatch stays before its read: beside it, each turn would move a batch out
            # of the waiting room ahead of the reads, deciding the order of tasks a turn
            # early and leaving a batch on the stream when the consumer stops.)
            promotion = asyncio.ensure_future(
                broker._promote_dispatch(self.stream, self.consumer, options, None)
            )
            try:
                await self._fetch(time.monotonic())
            except BaseException:
                # The read's error (or our cancellation) is what counts; the promotion's
                # outcome, whatever it is, is moot.
                promotion.add_done_callback(_retrieved)
                raise
            self._due(await promotion)
            return
        # Due delayed entries back onto the stream, and keyed ones from the waiting room
        # (as many as this read will take; none while draining the own PEL).
        due_in = await broker._promote_dispatch(
            self.stream, self.consumer, options, 0 if self.pel_cursor is not None else None
        )
        self._due(due_in)
        drained = False
        if self.pel_cursor is not None:
            await self._read_own_pel()
            if self.buffer:
                return
            drained = self.pel_cursor is None
        # Just drained: this turn dispatched nothing from the waiting room, so its read
        # takes what is on the stream without blocking, and the next turn dispatches (what
        # waits there for this consumer would otherwise wait a whole block).
        await self._fetch(time.monotonic(), at_most=0.0 if drained else None)

    def _due(self, due_in: float | None) -> None:
        """Note when the next delayed entry falls due (``inf``: none is delayed)."""
        self.due_at = math.inf if due_in is None else time.monotonic() + due_in

    async def _fetch(self, now: float, *, at_most: float | None = None) -> None:
        """Reclaim expired leases when it is time, trim when it is time, else read new
        entries, blocking no later than the next delayed entry is due (``due_at``), nor
        longer than ``at_most`` seconds (0: the shortest block)."""
        broker, options = self.broker, self.options
        if now >= self.next_reclaim:
            self.next_reclaim = now + options.effective_reclaim_interval
            claimed = await claim(
                broker,
                self.stream,
                self.group,
                self.consumer,
                options.lease,
                options.batch_size,
                options.max_deliveries,
                skip=self.unsettled.__contains__,
            )
            self._take(await broker._keyed(claimed, options, claimed=True))
            if self.buffer:
                return
        if broker.trim_interval is not None and now >= self.next_trim:
            self.next_trim = now + broker.trim_interval
            await broker.trim(self.stream)
        block = min(options.block, max(0.001, self.next_reclaim - now))
        if self.due_at is not None:
            block = min(block, max(0.001, self.due_at - now))
        if at_most is not None:
            block = min(block, max(0.001, at_most))
        await self._read_new(block)

    async def _read_own_pel(self) -> None:
        assert self.pel_cursor is not None
        with mapped_errors():
            reply = await self.broker._client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: self.pel_cursor},
                count=self.options.batch_size,
            )
        entries = _entries(reply)
        if not entries:
            self.pel_cursor = None
            return
        self.pel_cursor = _text(entries[-1][0])
        fresh = [(i, f) for i, f in entries if _text(i) not in self.unsettled]
        own = await build_deliveries(
            self.broker,
            self.stream,
            self.group,
            self.consumer,
            fresh,
            self.options.max_deliveries,
        )
        self._take(await self.broker._keyed(own, self.options, claimed=True))

    async def _xreadgroup(self, block: float) -> Any:
        # A coroutine of our own around redis-py's: a read cancelled before it starts then
        # never made redis-py's inner command coroutine (it would be left unawaited).
        return await self.broker._reader.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.options.batch_size,
            block=max(1, int(block * 1000)),
        )

    async def _read_new(self, block: float) -> None:
        read = asyncio.ensure_future(self._xreadgroup(block))
        # The broker's close cancels the read. Awaited directly, the reply resumes this
        # consumer one loop turn after the read ends (asyncio.wait takes two); cancelled,
        # this consumer waits for the read to end first. Either way, whatever the read
        # would have fetched stays pending and is reclaimed when its lease runs out.
        # (A cancel of ours that the read swallowed is raised by the next turn of ``run``.)
        closed = self.broker._closed_signal()
        stop = partial(_cancel, read)
        closed.add_done_callback(stop)
        try:
            with mapped_errors():
                reply = await read
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if read.cancelled() and closed.done() and task is not None and not task.cancelling():
                return  # closing
            raise
        finally:
            closed.remove_done_callback(stop)
        new = await build_deliveries(
            self.broker,
            self.stream,
            self.group,
            self.consumer,
            _entries(reply),
            self.options.max_deliveries,
            fresh=True,
        )
        self._take(await self.broker._keyed(new, self.options, claimed=False))

    def _take(self, deliveries: list[RedisDelivery]) -> None:
        for delivery in deliveries:
            delivery._tracker = self.unsettled
            self.unsettled[delivery.entry_id] = delivery
            self.buffer.append(delivery)

    # -- outages ----------------------------------------------------------------------

    async def _lost_group(self) -> None:
        self.group_ready = False
        self.nogroup_streak += 1
        if self.nogroup_streak == 1:
            logger.warning(
                "consumer group %s of stream %s is gone (deleted, or Redis lost its data); "
                "recreating it",
                self.group,
                self.stream,
            )
        else:  # lost again right after recreating it: back off like an outage
            self.failures += 1
            await self._sleep(self._backoff())

    async def _outage(self, exc: BaseException) -> None:
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            logger.warning(
                "Redis unavailable for consumer %s on %s (%s); retrying with backoff",
                self.consumer,
                self.stream,
                exc,
            )
        self.failures += 1
        await self._sleep(self._backoff())

    def _recovered(self) -> None:
        if self.outage_since is not None:
            logger.warning(
                "Redis is back for consumer %s on %s after %.1fs",
                self.consumer,
                self.stream,
                time.monotonic() - self.outage_since,
            )
            self.outage_since = None
            # Reads in flight when Redis went down may have left entries in our PEL.
            self.pel_cursor = "0"
        self.failures = 0
        self.nogroup_streak = 0

    def _backoff(self) -> float:
        ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(self.failures, 16))
        return random.uniform(ceiling / 2, ceiling)

    async def _sleep(self, seconds: float) -> None:
        closed = self.broker._closed_signal()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closed), seconds)

    # -- leases -----------------------------------------------------------------------

    async def _extend_forever(self) -> None:
        """Renew every unsettled delivery of this consumer in one batched call per period."""
        interval = self.options.lease / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(self.unsettled)
            if not ids:
                continue
            try:
                lost = await self.broker._extend(self.stream, self.group, self.consumer, ids)
                await self.broker._renew_running(
                    self.stream, self.options.lease, list(self.unsettled.values())
                )
            except BrokerError as exc:
                logger.debug("lease renewal failed for %s: %s", self.consumer, exc)
                continue
            for entry_id in lost:
                delivery = self.unsettled.pop(entry_id, None)
                if delivery is not None and not delivery.settled:
                    delivery.lease_lost = True
                    logger.warning(
                        "lease lost on entry %s of %s (consumer %s)",
                        entry_id,
                        self.stream,
                        self.consumer,
                    )


def _honour_swallowed_cancel() -> None:
    """Raise ``CancelledError`` if our task was cancelled but the cancel never arrived.

    On Python 3.11, ``asyncio.wait_for`` (which redis-py uses to send every command)
    returns the inner result instead of raising when a cancel lands just as the inner
    operation completes. The loop would then spin on forever in a task that is being
    cancelled (observed: ``Task.cancel()`` then ``await task`` hanging in the fault tests).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _entries(reply: Any) -> list[RawEntry]:
    """The (id, fields) pairs of an XREADGROUP reply on one stream (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
        batches = [b[0] if b and isinstance(b[0], list) else b for b in streams]
    else:
        batches = [item[1] for item in reply]
    return [(i, f or {}) for batch in batches for i, f in batch if i is not None]
