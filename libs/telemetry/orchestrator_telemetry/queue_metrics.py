"""Queue gauges read from the broker at scrape time, cached so scrapes cannot hammer Redis.

``QueueMetrics`` is a prometheus_client collector on a ``CollectorRegistry``, reporting:

- ``orchestrator_queue_backlog{stream,group}``: entries waiting for the group, undelivered
  plus delayed (nacked, waiting for their retry time): ``Broker.backlog``;
- ``orchestrator_queue_pending{stream,group}``: delivered to a consumer and not settled yet
  (running, or held by a consumer that died until its lease runs out): ``Broker.pending_count``;
- ``orchestrator_queue_dead_letters{stream}``: entries in ``<stream>:dead``, counted up to
  ``dead_letter_cap``, for the streams watched with ``dead_letters=True`` (read every
  ``dead_letter_ttl`` seconds, as it fetches the entries);
- for the streams watched with ``fair=True`` (keyed publishing: a waiting room),
  ``orchestrator_queue_waiting{stream,priority}``: entries not yet dispatched, by priority
  (``Broker.queue_depths``), and ``orchestrator_queue_tenant_waiting{stream,tenant}``: the
  same for the ``top_tenants`` tenants with most waiting (``Broker.waiting_keys``) and
  ``other`` for the rest, so the labels stay bounded however many tenants there are;
- ``orchestrator_broker_up``: 1 when the broker answered the last refresh, else 0.

A refresh runs at most once per ``ttl`` seconds whatever the number of scrapers (concurrent
scrapes share one refresh), and each broker call is bounded by ``timeout``: a scrape of a
process whose Redis is down answers at once with ``orchestrator_broker_up 0`` and without the
queue series (a stale depth would look like a healthy one).

The broker is read by an async refresh the ``/metrics`` handler awaits before the exposition
(``metrics.add_refresh``); ``collect()`` yields the families of the last read.

One registry holds one ``QueueMetrics``: ``QueueMetrics.on(registry, broker)`` returns the
one already there, so the API and a worker sharing a process (single-process mode) add
their streams to the same gauges.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator_broker import Broker

from .metrics import MetricError, add_refresh

__all__ = ["OTHER_TENANTS", "QueueMetrics"]

log = logging.getLogger(__name__)


_ON_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, QueueMetrics] = (
    weakref.WeakKeyDictionary()
)

_BACKLOG = (
    "orchestrator_queue_backlog",
    "Entries waiting for a consumer group: undelivered plus delayed retries.",
)
_PENDING = (
    "orchestrator_queue_pending",
    "Entries delivered to a consumer of the group and not settled yet.",
)
_WAITING = (
    "orchestrator_queue_waiting",
    "Entries waiting to be dispatched (the fair waiting room), by priority; delayed retries "
    "included.",
)
_TENANT_WAITING = (
    "orchestrator_queue_tenant_waiting",
    "Entries waiting to be dispatched, for the tenants with most waiting (the rest: other).",
)
#: The tenant label of the waiting entries of every tenant not among the top ones.
OTHER_TENANTS = "other"
_UP = ("orchestrator_broker_up", "1 if the broker answered the last queue metrics refresh, else 0.")


class QueueMetrics(Collector):
    """Backlog, pending and dead-letter gauges of ``watched`` (stream, group) pairs
    (``watch()`` adds more); dead letters are read for ``dead_letter_streams``."""

    @classmethod
    def on(cls, registry: CollectorRegistry, broker: Broker) -> QueueMetrics:
        """The queue gauges of ``registry``, made on first use with ``broker``."""
        found = _ON_REGISTRY.get(registry)
        if found is None:
            found = cls(registry, broker, ())
        return found

    def __init__(
        self,
        registry: CollectorRegistry,
        broker: Broker,
        watched: Sequence[tuple[str, str]],
        *,
        dead_letter_streams: Sequence[str] = (),
        ttl: float = 2.0,
        timeout: float = 1.0,
        dead_letter_ttl: float = 30.0,
        dead_letter_cap: int = 100,
        top_tenants: int = 10,
    ) -> None:
        if registry in _ON_REGISTRY:
            raise MetricError("this registry has queue gauges already: use QueueMetrics.on()")
        self._broker = broker
        self._watched = list(dict.fromkeys(watched))
        self._dead_streams = list(dict.fromkeys(dead_letter_streams))
        self._fair: list[tuple[str, str]] = []
        self._top_tenants = top_tenants
        self._ttl = ttl
        self._timeout = timeout
        self._dead_letter_ttl = dead_letter_ttl
        self._dead_letter_cap = dead_letter_cap
        self._dead_help = (
            f"Entries in the stream's dead-letter stream (counted up to {dead_letter_cap})."
        )
        self._refreshed = -float("inf")
        self._dead_letters_read = -float("inf")
        self._refreshing: asyncio.Future[None] | None = None
        # The last read: None while the broker is down (no stale depth is shown).
        self._depths: list[tuple[str, str, int, int]] | None = None
        self._dead: dict[str, int] = {}
        self._waiting: list[tuple[str, dict[str, int], dict[str, int]]] = []
        registry.register(self)
        _ON_REGISTRY[registry] = self
        add_refresh(registry, self.refresh)

    def watch(
        self, stream: str, group: str, *, dead_letters: bool = False, fair: bool = False
    ) -> None:
        """Also report ``stream`` for ``group`` (and its dead letters, its waiting room by
        priority and by tenant, if asked)."""
        if (stream, group) not in self._watched:
            self._watched.append((stream, group))
        if fair and (stream, group) not in self._fair:
            self._fair.append((stream, group))
        if dead_letters and stream not in self._dead_streams:
            self._dead_streams.append(stream)

    def describe(self) -> list[Metric]:
        return [
            GaugeMetricFamily(*_BACKLOG, labels=("stream", "group")),
            GaugeMetricFamily(*_PENDING, labels=("stream", "group")),
            GaugeMetricFamily(
                "orchestrator_queue_dead_letters", self._dead_help, labels=("stream",)
            ),
            GaugeMetricFamily(*_WAITING, labels=("stream", "priority")),
            GaugeMetricFamily(*_TENANT_WAITING, labels=("stream", "tenant")),
            GaugeMetricFamily(*_UP),
        ]

    def collect(self) -> Iterator[Metric]:
        """The families of the last read (``refresh``)."""
        depths = self._depths
        yield GaugeMetricFamily(*_UP, value=0 if depths is None else 1)
        if depths is None:
            return
        backlog = GaugeMetricFamily(*_BACKLOG, labels=("stream", "group"))
        pending = GaugeMetricFamily(*_PENDING, labels=("stream", "group"))
        for stream, group, waiting, delivered in depths:
            backlog.add_metric((stream, group), waiting)
            pending.add_metric((stream, group), delivered)
        yield backlog
        yield pending
        if self._waiting:
            room = GaugeMetricFamily(*_WAITING, labels=("stream", "priority"))
            tenants = GaugeMetricFamily(*_TENANT_WAITING, labels=("stream", "tenant"))
            for stream, by_priority, top in self._waiting:
                for priority, count in by_priority.items():
                    room.add_metric((stream, priority), count)
                for tenant, count in top.items():
                    tenants.add_metric((stream, tenant), count)
                rest = sum(by_priority.values()) - sum(top.values())
                tenants.add_metric((stream, OTHER_TENANTS), max(0, rest))
            yield room
            yield tenants
        if self._dead:
            dead = GaugeMetricFamily(
                "orchestrator_queue_dead_letters", self._dead_help, labels=("stream",)
            )
            for stream, count in self._dead.items():
                dead.add_metric((stream,), count)
            yield dead

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
            reads = 1 + len(self._watched) + len(self._fair)
            async with asyncio.timeout(self._timeout * reads):
                depths = [
                    (
                        stream,
                        group,
                        await self._broker.backlog(stream, group),
                        await self._broker.pending_count(stream, group),
                    )
                    for stream, group in self._watched
                ]
                waiting = [
                    (
                        stream,
                        await self._broker.queue_depths(stream, group),
                        await self._broker.waiting_keys(stream, self._top_tenants),
                    )
                    for stream, group in self._fair
                ]
                dead = None
                if time.monotonic() - self._dead_letters_read >= self._dead_letter_ttl:
                    dead = {
                        stream: len(await self._broker.dead_letters(stream, self._dead_letter_cap))
                        for stream in self._dead_streams
                    }
        except Exception as exc:  # the broker is down or slow: say so, show no stale depth
            log.debug("queue metrics: the broker did not answer: %r", exc)
            self._depths = None
            self._waiting = []
            self._dead = {}
            self._dead_letters_read = -float("inf")
            return
        self._depths = depths
        self._waiting = waiting
        if dead is not None:
            self._dead_letters_read = time.monotonic()
            self._dead = {**self._dead, **dead}
