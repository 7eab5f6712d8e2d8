"""Queue gauges read from the broker at scrape time, cached so scrapes cannot hammer Redis.

``QueueMetrics`` registers, on a ``Registry``:

- ``orchestrator_queue_backlog{stream,group}``: entries waiting for the group, undelivered
  plus delayed (nacked, waiting for their retry time): ``Broker.backlog``;
- ``orchestrator_queue_pending{stream,group}``: delivered to a consumer and not settled yet
  (running, or held by a consumer that died until its lease runs out): ``Broker.pending_count``;
- ``orchestrator_queue_dead_letters{stream}``: entries in ``<stream>:dead``, counted up to
  ``dead_letter_cap``, for the streams watched with ``dead_letters=True`` (read every
  ``dead_letter_ttl`` seconds, as it fetches the entries);
- ``orchestrator_broker_up``: 1 when the broker answered the last refresh, else 0.

A refresh runs at most once per ``ttl`` seconds whatever the number of scrapers (concurrent
scrapes share one refresh), and each broker call is bounded by ``timeout``: a scrape of a
process whose Redis is down answers at once with ``orchestrator_broker_up 0`` and without the
queue series (a stale depth would look like a healthy one).

One registry holds one ``QueueMetrics``: ``QueueMetrics.on(registry, broker)`` returns the
one already there, so the API and a worker sharing a process (single-process mode) add
their streams to the same gauges.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence

from orchestrator_broker import Broker

from .metrics import MetricError, Registry

__all__ = ["QueueMetrics"]

log = logging.getLogger(__name__)


_ON_REGISTRY: weakref.WeakKeyDictionary[Registry, QueueMetrics] = weakref.WeakKeyDictionary()


class QueueMetrics:
    """Backlog, pending and dead-letter gauges of ``watched`` (stream, group) pairs
    (``watch()`` adds more); dead letters are read for ``dead_letter_streams``."""

    @classmethod
    def on(cls, registry: Registry, broker: Broker) -> QueueMetrics:
        """The queue gauges of ``registry``, made on first use with ``broker``."""
        found = _ON_REGISTRY.get(registry)
        if found is None:
            found = cls(registry, broker, ())
        return found

    def __init__(
        self,
        registry: Registry,
        broker: Broker,
        watched: Sequence[tuple[str, str]],
        *,
        dead_letter_streams: Sequence[str] = (),
        ttl: float = 2.0,
        timeout: float = 1.0,
        dead_letter_ttl: float = 30.0,
        dead_letter_cap: int = 100,
    ) -> None:
        if registry in _ON_REGISTRY:
            raise MetricError("this registry has queue gauges already: use QueueMetrics.on()")
        _ON_REGISTRY[registry] = self
        self._broker = broker
        self._watched = list(dict.fromkeys(watched))
        self._dead_streams = list(dict.fromkeys(dead_letter_streams))
        self._ttl = ttl
        self._timeout = timeout
        self._dead_letter_ttl = dead_letter_ttl
        self._dead_letter_cap = dead_letter_cap
        self._refreshed = -float("inf")
        self._dead_letters_read = -float("inf")
        self._refreshing: asyncio.Future[None] | None = None
        self.backlog = registry.gauge(
            "orchestrator_queue_backlog",
            "Entries waiting for a consumer group: undelivered plus delayed retries.",
            ("stream", "group"),
        )
        self.pending = registry.gauge(
            "orchestrator_queue_pending",
            "Entries delivered to a consumer of the group and not settled yet.",
            ("stream", "group"),
        )
        self.dead_letters = registry.gauge(
            "orchestrator_queue_dead_letters",
            f"Entries in the stream's dead-letter stream (counted up to {dead_letter_cap}).",
            ("stream",),
        )
        self.up = registry.gauge(
            "orchestrator_broker_up",
            "1 if the broker answered the last queue metrics refresh, else 0.",
        )
        registry.add_collector(self.refresh)

    def watch(self, stream: str, group: str, *, dead_letters: bool = False) -> None:
        """Also report ``stream`` for ``group`` (and its dead letters if asked)."""
        if (stream, group) not in self._watched:
            self._watched.append((stream, group))
        if dead_letters and stream not in self._dead_streams:
            self._dead_streams.append(stream)

    async def refresh(self) -> None:
        """Read the gauges from the broker unless read less than ``ttl`` seconds ago."""
        if time.monotonic() - self._refreshed < self._ttl:
            return
        if self._refreshing is not None:  # another scrape is reading: share its result
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            await self._read()
        finally:
            self._refreshed = time.monotonic()
            self._refreshing.set_result(None)
            self._refreshing = None

    async def _read(self) -> None:
        try:
            async with asyncio.timeout(self._timeout * (1 + len(self._watched))):
                values = [
                    (
                        stream,
                        group,
                        await self._broker.backlog(stream, group),
                        await self._broker.pending_count(stream, group),
                    )
                    for stream, group in self._watched
                ]
                dead = None
                if time.monotonic() - self._dead_letters_read >= self._dead_letter_ttl:
                    dead = {
                        stream: len(await self._broker.dead_letters(stream, self._dead_letter_cap))
                        for stream in self._dead_streams
                    }
        except Exception as exc:  # the broker is down or slow: say so, show no stale depth
            log.debug("queue metrics: the broker did not answer: %r", exc)
            self.up.set(0)
            self.backlog.clear()
            self.pending.clear()
            self.dead_letters.clear()
            self._dead_letters_read = -float("inf")
            return
        self.up.set(1)
        for stream, group, backlog, pending in values:
            self.backlog.labels(stream, group).set(backlog)
            self.pending.labels(stream, group).set(pending)
        if dead is not None:
            self._dead_letters_read = time.monotonic()
            for stream, count in dead.items():
                self.dead_letters.labels(stream).set(count)
