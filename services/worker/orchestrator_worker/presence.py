"""The worker's advert: what it serves, announced in the broker under a heartbeat TTL.

``advertising(broker, group, advert, ttl)`` announces ``advert`` at once and again every
``ttl / 3`` seconds while the block runs, then withdraws it. A worker that dies stops
renewing, and the API stops counting it ``ttl`` seconds later (``PRESENCE_TTL_SECONDS``). An
unreachable broker never stops the worker: the first failure is logged (a warning), the
heartbeat keeps trying on its schedule, and the recovery is logged once too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from orchestrator_broker import Broker, BrokerError
from orchestrator_tasks import WorkerAdvert, encode_advert

__all__ = ["advertising"]

log = logging.getLogger(__name__)

#: How long the withdrawal at the end may take (the broker may be down by then).
_WITHDRAW_TIMEOUT: Final = 2.0


@contextlib.asynccontextmanager
async def advertising(
    broker: Broker, group: str, advert: WorkerAdvert, *, ttl: float
) -> AsyncIterator[None]:
    """Keep ``advert`` alive in presence ``group`` for the block; withdraw it after."""
    heartbeat = asyncio.create_task(_heartbeat(broker, group, advert, ttl), name="presence")
    try:
        yield
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await _withdraw(broker, group, advert.consumer)


async def _heartbeat(broker: Broker, group: str, advert: WorkerAdvert, ttl: float) -> None:
    """Announce every ``ttl / 3`` seconds until cancelled (the worker's life bounds it)."""
    interval = ttl / 3
    payload = encode_advert(advert)
    failing = False
    while True:
        try:
            async with asyncio.timeout(interval):
                await broker.announce(group, advert.consumer, payload, ttl)
        except Exception as exc:  # BrokerError, a timeout, or a bug: none may stop the worker
            if not failing:
                log.warning(
                    "cannot announce worker %s (%s); the API does not see it until the "
                    "broker answers; retrying every %g s",
                    advert.consumer,
                    str(exc) or type(exc).__name__,
                    interval,
                )
            failing = True
        else:
            if failing:
                log.info("worker %s announced again", advert.consumer)
            failing = False
        await asyncio.sleep(interval)


async def _withdraw(broker: Broker, group: str, member: str) -> None:
    try:
        async with asyncio.timeout(_WITHDRAW_TIMEOUT):
            await broker.withdraw(group, member)
    except (BrokerError, OSError, TimeoutError) as exc:
        # Not fatal: the advert expires by itself after its TTL.
        log.info("could not withdraw worker %s (%s); it expires by itself", member, exc)
