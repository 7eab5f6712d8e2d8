"""The reading side of the Redis adapter: turning fetched or claimed entries into deliveries.

Every entry read is either yielded as a delivery or, when it cannot be (deleted while
pending, undecodable, past ``max_deliveries``), logged and recorded in ``<stream>:dead``:
nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._dead_letters import (
    DEAD_CONSUMER,
    DEAD_DELIVERY_COUNT,
    DEAD_ENTRY_ID,
    DEAD_GROUP,
    DEAD_REASON,
)
from ._redis_delivery import RedisDelivery
from ._redis_errors import mapped_errors
from ._redis_scripts import DELETED_REASON
from .errors import DecodeError, LeaseLost
from .message import decode_fields
from .protocol import dead_letter_stream

if TYPE_CHECKING:
    from .redis_streams import RedisStreamsBroker

#: One stream entry's fields as redis-py returns them (bytes without decode_responses).
RawFields = Mapping[bytes | str, bytes | str]
RawEntry = tuple[bytes | str, RawFields]

logger = logging.getLogger("orchestrator_broker.redis")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def pel_counts(
    broker: RedisStreamsBroker, stream: str, group: str, consumer: str, ids: Iterable[str]
) -> dict[str, int]:
    """The PEL delivery counter of each id still pending for ``consumer``."""
    with mapped_errors():
        async with broker._client.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(stream, group, entry_id, entry_id, 1, consumer)
            replies = await pipe.execute()
    return {
        _text(row["message_id"]): int(row["times_delivered"]) for rows in replies for row in rows
    }


async def claim(
    broker: RedisStreamsBroker,
    stream: str,
    group: str,
    consumer: str,
    min_idle: float,
    count: int,
    max_deliveries: int | None,
    skip: Callable[[str], bool] = lambda _: False,
) -> list[RedisDelivery]:
    """XAUTOCLAIM up to ``count`` idle entries; surfaces deleted ones in ``S:dead``."""
    broker._check_open()
    claimed: list[RawEntry] = []
    start: bytes | str = "0-0"
    for _ in range(10):  # bounded walk over the PEL
        with mapped_errors():
            reply: Any = await broker._client.xautoclaim(
                stream, group, consumer, int(min_idle * 1000), start, count=count - len(claimed)
            )
        start, entries = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        claimed += entries
        if deleted:
            await record_deleted(broker, stream, group, consumer, [_text(i) for i in deleted])
        if _text(start) == "0-0" or len(claimed) >= count:
            break
    fresh = [(i, f) for i, f in claimed if not skip(_text(i))]
    return await build_deliveries(broker, stream, group, consumer, fresh, max_deliveries)


async def record_deleted(
    broker: RedisStreamsBroker, stream: str, group: str, consumer: str, ids: list[str]
) -> None:
    """Entries XAUTOCLAIM found deleted (already gone from the PEL): record each one."""
    for entry_id in ids:
        logger.warning(
            "entry %s of %s (group %s) was deleted before it could be redelivered; recorded in %s",
            entry_id,
            stream,
            group,
            dead_letter_stream(stream),
        )
    with mapped_errors():
        async with broker._client.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xadd(
                    dead_letter_stream(stream),
                    {
                        DEAD_REASON: DELETED_REASON,
                        DEAD_ENTRY_ID: entry_id,
                        DEAD_GROUP: group,
                        DEAD_DELIVERY_COUNT: "0",  # unknown: the PEL entry is gone
                        DEAD_CONSUMER: consumer,
                    },
                )
            await pipe.execute()


async def build_deliveries(
    broker: RedisStreamsBroker,
    stream: str,
    group: str,
    consumer: str,
    entries: list[RawEntry],
    max_deliveries: int | None,
    *,
    fresh: bool = False,
) -> list[RedisDelivery]:
    """Deliveries for entries now pending for ``consumer``; dead-letters the bad ones.

    ``fresh`` entries were just read with ``>`` (PEL counter 1); others need the counter
    from ``XPENDING``.
    """
    ids = [_text(i) for i, _ in entries]
    counts = (
        {i: 1 for i in ids} if fresh else await pel_counts(broker, stream, group, consumer, ids)
    )
    out: list[RedisDelivery] = []
    for entry_id, (_, fields) in zip(ids, entries, strict=True):
        if entry_id not in counts:
            continue  # taken by another consumer meanwhile
        reason: str | None = None
        count = counts[entry_id]
        if not fields:
            reason = DELETED_REASON
        else:
            try:
                message, prior = decode_fields(fields)
            except DecodeError as exc:
                reason = f"undecodable entry: {exc}"
            else:
                count += prior
                if max_deliveries is not None and count > max_deliveries:
                    reason = f"exceeded max_deliveries ({max_deliveries})"
        raw_key = fields.get(b"fair_key") or fields.get("fair_key") if fields else None
        key = _text(raw_key) if raw_key else None
        if reason is not None:
            # Recorded with the deliveries that really happened: this fetch is not one.
            logger.warning("dead-lettering entry %s of %s: %s", entry_id, stream, reason)
            with contextlib.suppress(LeaseLost):  # another consumer has it now
                await broker._dead_letter_entry(
                    stream, group, consumer, entry_id, reason, count - 1, key=key
                )
            continue
        delivery = RedisDelivery(message, stream, group, entry_id, count, consumer, broker)
        delivery.key = key
        out.append(delivery)
    return out
