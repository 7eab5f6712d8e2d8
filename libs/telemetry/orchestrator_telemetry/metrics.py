"""Metrics on ``prometheus_client``: bounded label sets, cached children, traced exemplars.

Each service keeps its own ``prometheus_client.CollectorRegistry`` (never the global one), and
defines its families through the helpers here, which wrap prometheus_client's ``Counter``,
``Gauge`` and ``Histogram`` in a ``Family``:

- Bounded cardinality: a family holds at most ``max_series`` label sets. Past that, new label
  sets are all counted under one overflow series whose label values are ``OVERFLOW``, and
  ``orchestrator_metrics_series_overflow_total{metric=...}`` counts how often that happened, so
  a caller feeding it unbounded values (a user-chosen model name) cannot grow the process
  without limit; label values are cut to ``MAX_LABEL_VALUE`` characters. Labels a client
  can choose the value of (a model name) are ``capped`` besides: each keeps
  at most ``max_label_values`` distinct values (``METRICS_MAX_LABEL_VALUES``, default
  ``MAX_LABEL_VALUES``), and later new values count as ``OTHER``, so one client cannot crowd
  out everyone's series.
- The hot path: ``family.labels(...)`` is one dict lookup on the raw values (prometheus_client's
  own ``labels()`` validates and stringifies every call); keep the child for hotter paths.
- Exemplars: a histogram child's ``observe_traced(value)`` takes the current sampled span's
  trace id as its bucket's exemplar, at most once per bucket per ``EXEMPLAR_INTERVAL`` (the
  span lookup is what this limits). prometheus_client exposes exemplars in OpenMetrics only
  (what Prometheus asks for), so Grafana links a latency sample to its trace in Tempo.

Values known only at scrape time come from ``prometheus_client.registry.Collector`` objects
(see ``queue_metrics``) or ``Gauge.set_function``; collectors that must first read something
asynchronously (the broker) add an async refresh with ``add_refresh``, which the ``/metrics``
handler awaits before the exposition (``metrics_http``).

The ``_created`` series prometheus_client adds to counters and histograms by default are
turned off for the process: no dashboard reads them, and they would double the series count.
"""

from __future__ import annotations

import math
import re
import time
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from itertools import pairwise
from typing import Final, Generic, TypeVar

import prometheus_client
from opentelemetry.trace import get_current_span
from prometheus_client import CollectorRegistry

from .errors import TelemetryError

__all__ = [
    "EXEMPLAR_INTERVAL",
    "MAX_LABEL_VALUE",
    "MAX_LABEL_VALUES",
    "MAX_SERIES",
    "OTHER",
    "OVERFLOW",
    "Family",
    "MetricError",
    "TracedHistogram",
    "add_refresh",
    "counter",
    "gauge",
    "histogram",
    "refresh",
]

#: The label value every label of the overflow series carries.
OVERFLOW: Final = "__overflow__"
#: The value a capped label takes once it has ``max_label_values`` distinct values.
OTHER: Final = "other"
#: Distinct values a capped label keeps by default (``METRICS_MAX_LABEL_VALUES``).
MAX_LABEL_VALUES: Final = 100
#: Longest label value kept; longer ones are cut (a 200-character model name, say).
MAX_LABEL_VALUE: Final = 100
#: Label sets a family keeps by default before counting new ones as overflow.
MAX_SERIES: Final = 1000
#: Seconds between two traced exemplars of one histogram bucket.
EXEMPLAR_INTERVAL: Final = 1.0

_OVERFLOW_METRIC: Final = "orchestrator_metrics_series_overflow_total"
_METRIC_NAME: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

_Child = TypeVar("_Child")
#: An async read a collector needs before a scrape (``add_refresh``).
Refresh = Callable[[], Awaitable[None]]

_OVERFLOWS: weakref.WeakKeyDictionary[CollectorRegistry, prometheus_client.Counter] = (
    weakref.WeakKeyDictionary()
)
_REFRESHES: weakref.WeakKeyDictionary[CollectorRegistry, list[Refresh]] = (
    weakref.WeakKeyDictionary()
)


class MetricError(TelemetryError, ValueError):
    """A metric defined or used wrongly: bad name, labels, buckets, or label value count."""


def add_refresh(registry: CollectorRegistry, read: Refresh) -> None:
    """Have ``refresh(registry)`` (the ``/metrics`` handler) await ``read()`` before each
    exposition, in the order added."""
    _REFRESHES.setdefault(registry, []).append(read)


async def refresh(registry: CollectorRegistry) -> None:
    """Run the registry's async refreshes (``add_refresh``), before exposing it."""
    for read in _REFRESHES.get(registry, ()):
        await read()


def _sampled_trace_id() -> int:
    """The current span's trace id if it is sampled (so it can be found in Tempo), else 0."""
    context = get_current_span().get_span_context()
    if context.trace_flags.sampled and context.trace_id:
        return context.trace_id
    return 0


class TracedHistogram:
    """One label set of a histogram, which can take the current trace as an exemplar."""

    __slots__ = ("_after", "_bounds", "_interval", "child")

    def __init__(
        self, child: prometheus_client.Histogram, bounds: tuple[float, ...], interval: float
    ) -> None:
        self.child = child
        self._bounds = bounds
        self._interval = interval
        self._after = [0.0] * (len(bounds) + 1)  # perf_counter time of the next traced exemplar

    def observe(self, value: float, trace_id: int = 0) -> None:
        """Count ``value``; a non-zero ``trace_id`` becomes its bucket's exemplar."""
        if trace_id:
            self.child.observe(value, {"trace_id": format(trace_id, "032x")})
        else:
            self.child.observe(value)

    def observe_traced(self, value: float, now: float | None = None) -> None:
        """Count ``value``, with the current sampled trace as its bucket's exemplar if that
        bucket got none in the last interval; an unsampled request's bucket looks again after
        a tenth of it. ``now`` is ``time.perf_counter()`` if the caller has just read it."""
        if now is None:
            now = time.perf_counter()
        index = bisect_left(self._bounds, value)
        if now >= self._after[index]:
            trace_id = _sampled_trace_id()
            if trace_id:
                self._after[index] = now + self._interval
                self.child.observe(value, {"trace_id": format(trace_id, "032x")})
                return
            self._after[index] = now + self._interval / 10
        self.child.observe(value)


class Family(Generic[_Child]):
    """A labelled prometheus_client metric with a bound on its label sets and a cache of its
    children. ``labels(...)`` takes the values in ``labelnames`` order; the labels named in
    ``capped`` keep at most ``max_label_values`` distinct values each (then ``OTHER``)."""

    def __init__(
        self,
        name: str,
        labelnames: Sequence[str],
        child: Callable[[tuple[str, ...]], _Child],
        overflow: prometheus_client.Counter,
        max_series: int,
        capped: Sequence[str] = (),
        max_label_values: int = MAX_LABEL_VALUES,
    ) -> None:
        self.name = name
        self.labelnames = tuple(labelnames)
        unknown = set(capped) - set(self.labelnames)
        if unknown:
            raise MetricError(f"{name}: capped labels {sorted(unknown)} are not its labels")
        if max_label_values < 1:
            raise MetricError(f"{name}: max_label_values must be positive")
        self._child = child
        self._overflow = overflow
        self._max_series = max_series
        self._series: dict[tuple[str, ...], _Child] = {}
        self._lookup: dict[tuple[object, ...], _Child] = {}
        #: Per capped label: its position and the values it has taken so far.
        self._capped = [(self.labelnames.index(label), set[str]()) for label in capped]
        self._max_label_values = max_label_values

    def labels(self, *values: object) -> _Child:
        """The child for these label values; the same object each time."""
        found = self._lookup.get(values)
        if found is not None:
            return found
        if len(values) != len(self.labelnames):
            raise MetricError(
                f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}"
            )
        key = tuple(str(value)[:MAX_LABEL_VALUE] for value in values)
        if self._capped:
            key = self._cap(key)
        found = self._series.get(key)
        if found is None:
            if len(self._series) >= self._max_series:
                self._overflow.labels(self.name).inc()
                return self._overflow_child()
            found = self._series[key] = self._child(key)
        if len(self._lookup) < 4 * self._max_series:  # raw spellings (200 vs "200"), bounded
            self._lookup[values] = found
        return found

    def _cap(self, key: tuple[str, ...]) -> tuple[str, ...]:
        """``key`` with each capped label's value, if new past the cap, as ``OTHER``."""
        capped = list(key)
        for index, seen in self._capped:
            value = capped[index]
            if value in seen:
                continue
            if len(seen) < self._max_label_values:
                seen.add(value)
            else:
                capped[index] = OTHER
        return tuple(capped)

    def _overflow_child(self) -> _Child:
        key = (OVERFLOW,) * len(self.labelnames)
        found = self._series.get(key)
        if found is None:  # the one series allowed past max_series
            found = self._series[key] = self._child(key)
        return found


def _overflow(registry: CollectorRegistry) -> prometheus_client.Counter:
    """The registry's overflow counter, made on first use (the API and a worker sharing a
    registry share it)."""
    found = _OVERFLOWS.get(registry)
    if found is None:
        found = _OVERFLOWS[registry] = prometheus_client.Counter(
            _OVERFLOW_METRIC,
            "Observations counted under the overflow series because a metric reached its "
            "label-set limit, by metric.",
            ("metric",),
            registry=registry,
        )
    return found


def _check(name: str, labelnames: Sequence[str], max_series: int) -> None:
    # prometheus_client takes UTF-8 names too; ours stay readable by every scraper as they are.
    if not _METRIC_NAME.match(name):
        raise MetricError(f"invalid metric name {name!r}")
    for label in labelnames:
        if not _LABEL_NAME.match(label) or label.startswith("__") or label in ("le", "quantile"):
            raise MetricError(f"{name}: invalid or reserved label name {label!r}")
    if len(set(labelnames)) != len(labelnames):
        raise MetricError(f"{name}: duplicate label names in {labelnames!r}")
    if not labelnames:
        raise MetricError(f"{name}: a Family has labels (use prometheus_client for one series)")
    if max_series < 1:
        raise MetricError(f"{name}: max_series must be positive")


def counter(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    *,
    max_series: int = MAX_SERIES,
    capped: Sequence[str] = (),
    max_label_values: int = MAX_LABEL_VALUES,
) -> Family[prometheus_client.Counter]:
    """A labelled counter on ``registry``; its name ends in ``_total``."""
    if not name.endswith("_total"):
        raise MetricError(f"counter {name!r} must end in _total")
    _check(name, labelnames, max_series)
    try:
        metric = prometheus_client.Counter(name, documentation, labelnames, registry=registry)
    except ValueError as exc:
        raise MetricError(f"{name}: {exc}") from exc
    return Family(
        name,
        labelnames,
        lambda key: metric.labels(*key),
        _overflow(registry),
        max_series,
        capped,
        max_label_values,
    )


def gauge(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    *,
    max_series: int = MAX_SERIES,
    capped: Sequence[str] = (),
    max_label_values: int = MAX_LABEL_VALUES,
) -> Family[prometheus_client.Gauge]:
    """A labelled gauge on ``registry``."""
    _check(name, labelnames, max_series)
    try:
        metric = prometheus_client.Gauge(name, documentation, labelnames, registry=registry)
    except ValueError as exc:
        raise MetricError(f"{name}: {exc}") from exc
    return Family(
        name,
        labelnames,
        lambda key: metric.labels(*key),
        _overflow(registry),
        max_series,
        capped,
        max_label_values,
    )


def histogram(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    *,
    buckets: Sequence[float],
    max_series: int = MAX_SERIES,
    exemplar_interval: float = EXEMPLAR_INTERVAL,
    capped: Sequence[str] = (),
    max_label_values: int = MAX_LABEL_VALUES,
) -> Family[TracedHistogram]:
    """A labelled histogram on ``registry`` with ``buckets`` (finite, increasing; ``+Inf`` is
    added), whose children take trace exemplars (``TracedHistogram``)."""
    _check(name, labelnames, max_series)
    bounds = tuple(float(bound) for bound in buckets if bound != math.inf)
    if not bounds or not all(a < b for a, b in pairwise((-math.inf, *bounds, math.inf))):
        raise MetricError(f"{name}: buckets must be increasing finite numbers, got {buckets!r}")
    try:
        metric = prometheus_client.Histogram(
            name, documentation, labelnames, registry=registry, buckets=bounds
        )
    except ValueError as exc:
        raise MetricError(f"{name}: {exc}") from exc
    return Family(
        name,
        labelnames,
        lambda key: TracedHistogram(metric.labels(*key), bounds, exemplar_interval),
        _overflow(registry),
        max_series,
        capped,
        max_label_values,
    )
