"""A delivery of the Redis adapter: one stream entry, pending for one consumer until settled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .errors import AlreadySettled, LeaseLost
from .message import Message

if TYPE_CHECKING:
    from .redis_streams import RedisStreamsBroker


@attrs.define(eq=False)
class RedisDelivery:
    """One stream entry handed to one consumer; settle it exactly once."""

    message: Message
    stream: str
    group: str
    entry_id: str
    delivery_count: int
    consumer: str
    _broker: RedisStreamsBroker = attrs.field(repr=False)
    _tracker: dict[str, RedisDelivery] | None = attrs.field(default=None, repr=False)
    _settled: bool = False
    lease_lost: bool = False
    key: str | None = None  # a keyed (fairly dispatched) entry's key
    capped: bool = False  # its key has a cap: settling it releases its share

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if self.capped and self.key is not None:
            await self._settle(self._broker._ack_keyed(self))
            return
        await self._settle(self._broker._ack(self.stream, self.group, self.entry_id))

    async def nack(self, delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        await self._settle(self._broker._nack(self, delay, self.delivery_count))

    async def defer(self, delay: float) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        # prior_deliveries one less: the redelivery's count is this one's again.
        await self._settle(self._broker._nack(self, delay, self.delivery_count - 1))

    async def dead_letter(self, reason: str) -> None:
        await self._settle(self._broker._dead_letter(self, reason))

    async def extend_lease(self) -> None:
        if self._settled:
            raise AlreadySettled(f"delivery {self.entry_id} is settled")
        lost = await self._broker._extend(self.stream, self.group, self.consumer, [self.entry_id])
        if lost:
            self.lease_lost = True
            self._untrack()
            raise LeaseLost(f"entry {self.entry_id} is no longer pending for {self.consumer}")

    async def _settle(self, operation: Any) -> None:
        if self._settled:
            operation.close()  # the un-awaited coroutine
            raise AlreadySettled(f"delivery {self.entry_id} is settled")
        self._settled = True
        try:
            await operation
        except LeaseLost:
            raise  # no longer ours: stays settled from this consumer's point of view
        except BaseException:
            # Not settled; no longer auto-extended either, so if the caller gives up the
            # lease runs out and the entry is redelivered.
            self._settled = False
            raise
        finally:
            self._untrack()

    def _untrack(self) -> None:
        if self._tracker is not None:
            self._tracker.pop(self.entry_id, None)
