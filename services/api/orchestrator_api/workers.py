"""The live workers, as they advertise themselves in the broker, for ``/v1/models``,
``/health`` and the model check at submit.

The API cannot know from its own environment what the workers serve; each worker announces a
``WorkerAdvert`` under a TTL (``PRESENCE_TTL_SECONDS``), and ``WorkerDirectory`` reads the
live ones at most once per ``max_age`` seconds (1.5 by default), shared by every request of
that window, so neither a model listing nor a submit costs a broker call of its own. Callers
arriving while a read is under way wait for that same read.

When the broker cannot be read (or does not answer within ``timeout``), no worker is known
for that window: the listing is empty, ``/health`` counts 0 (and names the broker as
unavailable on its own), and submit checks no model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from orchestrator_broker import Broker
from orchestrator_tasks import ContractError, WorkerAdvert, decode_advert

__all__ = ["DEFAULT_MAX_AGE", "WorkerDirectory", "unserved_model"]

log = logging.getLogger(__name__)

#: How long one read of the live workers serves requests.
DEFAULT_MAX_AGE: Final = 1.5


@attrs.frozen
class _Snapshot:
    adverts: tuple[WorkerAdvert, ...]
    read_at: float


class WorkerDirectory:
    """The live workers' adverts of presence ``group``, read at most every ``max_age`` s."""

    def __init__(
        self,
        broker: Broker,
        group: str,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._broker = broker
        self._group = group
        self._max_age = max_age
        self._timeout = timeout
        self._clock = clock
        self._snapshot: _Snapshot | None = None
        self._reading: asyncio.Task[_Snapshot] | None = None
        self._failing = False
        self._unreadable: set[str] = set()

    async def adverts(self) -> tuple[WorkerAdvert, ...]:
        """The adverts of the live workers (as of at most ``max_age`` seconds ago)."""
        snapshot = self._snapshot
        if snapshot is not None and self._clock() - snapshot.read_at < self._max_age:
            return snapshot.adverts
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read(), name="worker-directory")
        # shield: one caller cancelled (its client went away) does not cancel the others' read
        snapshot = await asyncio.shield(self._reading)
        self._snapshot = snapshot
        return snapshot.adverts

    async def close(self) -> None:
        """Cancel a read under way (at app cleanup)."""
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    async def _read(self) -> _Snapshot:
        try:
            async with asyncio.timeout(self._timeout):
                members = await self._broker.members(self._group)
        except Exception as exc:  # the broker's outage is /health's to report, once per outage
            if not self._failing:
                log.warning(
                    "cannot read the live workers (%s); assuming none",
                    str(exc) or type(exc).__name__,
                )
            self._failing = True
            return _Snapshot((), self._clock())
        if self._failing:
            log.info("the live workers can be read again")
        self._failing = False
        return _Snapshot(tuple(self._decode(members)), self._clock())

    def _decode(self, members: dict[str, dict[str, object]]) -> Iterable[WorkerAdvert]:
        for member, payload in sorted(members.items()):
            try:
                yield decode_advert(payload)
            except ContractError as exc:
                if member not in self._unreadable:  # once per member, not per read
                    self._unreadable.add(member)
                    log.warning("worker %s advertises an unreadable advert: %s", member, exc)


def unserved_model(adverts: Iterable[WorkerAdvert], model: str | None) -> str | None:
    """Why no live worker can run a task naming ``model``, or None when one can, when the
    task names no model (the worker's ``DEFAULT_MODEL`` decides) or no worker is alive (the
    task waits in the queue for one)."""
    adverts = tuple(adverts)
    if model is None or not model.strip() or not adverts:
        return None
    if any(advert.serves(model) for advert in adverts):
        return None
    providers = sorted({p for a in adverts for p in a.providers})
    aliases = sorted({name for a in adverts for name in a.aliases})
    served = ", ".join(providers) + (f"; aliases: {', '.join(aliases)}" if aliases else "")
    return (
        f"no running worker serves {model[:100]!r}: give a model as provider/name with a "
        f"provider they serve ({served}), or see GET /v1/models"
    )
