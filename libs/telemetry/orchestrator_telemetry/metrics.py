"""Metrics: a small in-process registry exposed in the Prometheus and OpenMetrics text formats.

Counters, gauges and histograms, with labels. It is built for one asyncio event loop (no
locks: every observation and every scrape runs on the loop's thread) and for the hot path:
a labelled child is looked up once and kept (``family.labels(...)`` returns the same object
each time), and an observation is a few attribute updates; a histogram observation is one
``bisect`` over its bucket bounds. Nothing is allocated per observation.

Bounded cardinality: every family holds at most ``max_series`` label sets. Past that, new
label sets are all counted under one overflow series whose label values are ``OVERFLOW``,
and ``orchestrator_metrics_series_overflow_total{metric=...}`` counts how often that happened,
so a caller feeding it unbounded values (a task id, a user-chosen model name) cannot grow the
process without limit; label values are cut to ``MAX_LABEL_VALUE`` characters.

Exemplars: a histogram observation may carry the trace id of the moment (``observe(value,
trace_id)``, or ``observe_traced(value)`` which takes the current span's, at most once per
bucket per ``exemplar_interval``). They are exposed only in the OpenMetrics format (what
Prometheus asks for in its ``Accept`` header), one per bucket, as ``# {trace_id="..."} value
timestamp``, so Grafana links a latency sample to its trace in Tempo.

Values computed at scrape time (queue depth, in-flight tasks) come from collectors: callables
(sync or async) that ``Registry.collect()`` runs before ``Registry.expose()``.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Final, Generic, TypeVar

from opentelemetry.trace import get_current_span

from .errors import TelemetryError

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_PROMETHEUS",
    "DEFAULT_BUCKETS",
    "MAX_LABEL_VALUE",
    "OVERFLOW",
    "Collector",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "MetricError",
    "Registry",
    "current_trace_id",
    "wants_openmetrics",
]

#: Prometheus' own default buckets (seconds), for latencies of a few ms to ten seconds.
DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The label value every label of the overflow series carries.
OVERFLOW: Final = "__overflow__"
#: Longest label value kept; longer ones are cut (a 200-character model name, say).
MAX_LABEL_VALUE: Final = 100
CONTENT_TYPE_PROMETHEUS: Final = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_METRIC_NAME: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS: Final = frozenset({"le", "quantile"})
_OVERFLOW_METRIC: Final = "orchestrator_metrics_series_overflow_total"

#: A scrape-time callback: sets gauges (or counters) from the live state it watches.
Collector = Callable[[], Awaitable[None] | None]


class MetricError(TelemetryError, ValueError):
    """A metric defined or used wrongly: bad name, labels, buckets, or a negative increment."""


def current_trace_id() -> int:
    """The current span's trace id if it is sampled (so it can be found in Tempo), else 0."""
    context = get_current_span().get_span_context()
    if context.trace_flags.sampled and context.trace_id:
        return context.trace_id
    return 0


def wants_openmetrics(accept: str | None) -> bool:
    """Whether a scraper's ``Accept`` header asks for OpenMetrics (Prometheus does, and only
    that format carries exemplars)."""
    return accept is not None and "application/openmetrics-text" in accept


# ---- children: one label set's value(s) ---------------------------------------------------


class CounterChild:
    """A counter's value for one label set; only goes up."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise MetricError(f"a counter only goes up, got {amount!r}")
        self.value += amount


class GaugeChild:
    """A gauge's value for one label set."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    """A histogram's buckets, sum and exemplars for one label set.

    ``counts[i]`` counts observations in bucket ``i`` alone (``bounds[i-1] < v <= bounds[i]``,
    the last one is ``+Inf``); exposition makes them cumulative.
    """

    __slots__ = ("_after", "_interval", "bounds", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...], exemplar_interval: float) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        #: Per bucket: the latest (trace id, value, unix time) exemplar, or None.
        self.exemplars: list[tuple[int, float, float] | None] = [None] * (len(bounds) + 1)
        self._after = [0.0] * (len(bounds) + 1)  # perf_counter time of the next traced exemplar
        self._interval = exemplar_interval

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float, trace_id: int = 0) -> None:
        """Count ``value``; a non-zero ``trace_id`` becomes its bucket's exemplar."""
        index = bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.sum += value
        if trace_id:
            self.exemplars[index] = (trace_id, value, time.time())

    def observe_traced(self, value: float, now: float | None = None) -> None:
        """Count ``value``, with the current trace as its bucket's exemplar if that bucket got
        none in the last ``exemplar_interval``. The span lookup (about a microsecond) is what
        this limits: an unsampled request's bucket looks again after a tenth of the interval.

        ``now`` is ``time.perf_counter()`` if the caller has just read it (saves a clock read).
        """
        index = bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.sum += value
        if now is None:
            now = time.perf_counter()
        if now >= self._after[index]:
            trace_id = current_trace_id()
            if trace_id:
                self.exemplars[index] = (trace_id, value, time.time())
                self._after[index] = now + self._interval
            else:  # not sampled: look again soon, but not on every observation
                self._after[index] = now + self._interval / 10


_Child = TypeVar("_Child", CounterChild, GaugeChild, HistogramChild)


# ---- families -----------------------------------------------------------------------------


class _Family(Generic[_Child]):
    kind: str = ""

    def __init__(
        self,
        registry: Registry,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        max_series: int,
    ) -> None:
        if not _METRIC_NAME.match(name):
            raise MetricError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise MetricError(f"{name}: invalid label name {label!r}")
            if label in _RESERVED_LABELS:
                raise MetricError(f"{name}: label {label!r} is reserved")
        if len(set(labelnames)) != len(labelnames):
            raise MetricError(f"{name}: duplicate label names")
        if max_series < 1:
            raise MetricError(f"{name}: max_series must be positive")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.max_series = max_series
        self._registry = registry
        self._series: dict[tuple[str, ...], _Child] = {}
        self._lookup: dict[tuple[object, ...], _Child] = {}
        self._default: _Child | None = None
        if not self.labelnames:
            self._default = self._new_child()
            self._series[()] = self._default

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def labels(self, *values: object) -> _Child:
        """The child for these label values (in ``labelnames`` order); keep it for hot paths."""
        child = self._lookup.get(values)
        if child is not None:
            return child
        if len(values) != len(self.labelnames):
            raise MetricError(
                f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}"
            )
        key = tuple(str(value)[:MAX_LABEL_VALUE] for value in values)
        child = self._series.get(key)
        if child is None:
            if len(self._series) >= self.max_series:
                self._registry._overflowed(self.name)
                return self._overflow_child()
            child = self._new_child()
            self._series[key] = child
        if len(self._lookup) < 4 * self.max_series:  # raw spellings (200 vs "200"), bounded
            self._lookup[values] = child
        return child

    def _overflow_child(self) -> _Child:
        key = (OVERFLOW,) * len(self.labelnames)
        child = self._series.get(key)
        if child is None:  # the one series allowed past max_series
            child = self._new_child()
            self._series[key] = child
        return child

    def remove(self, *values: object) -> None:
        """Forget one label set (a provider that went away); no error if unknown."""
        key = tuple(str(value)[:MAX_LABEL_VALUE] for value in values)
        removed = self._series.pop(key, None)
        if removed is not None:
            self._lookup = {raw: c for raw, c in self._lookup.items() if c is not removed}

    def clear(self) -> None:
        """Forget every label set (for gauges rebuilt at each scrape)."""
        if self.labelnames:
            self._series.clear()
            self._lookup.clear()

    def series(self) -> Iterator[tuple[tuple[str, ...], _Child]]:
        """(label values, child) pairs, in creation order."""
        return iter(list(self._series.items()))

    def _unlabelled(self) -> _Child:
        if self._default is None:
            raise MetricError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._default


class Counter(_Family[CounterChild]):
    """A monotonically increasing count; its name ends in ``_total``."""

    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        """Increment the unlabelled counter."""
        self._unlabelled().inc(amount)

    @property
    def value(self) -> float:
        return self._unlabelled().value


class Gauge(_Family[GaugeChild]):
    """A value that goes up and down."""

    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    @property
    def value(self) -> float:
        return self._unlabelled().value


class Histogram(_Family[HistogramChild]):
    """Observations counted into buckets (cumulative ``le`` buckets, ``_sum``, ``_count``)."""

    kind = "histogram"

    def __init__(
        self,
        registry: Registry,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        max_series: int,
        buckets: Iterable[float],
        exemplar_interval: float,
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if bounds and bounds[-1] == math.inf:
            bounds = bounds[:-1]  # +Inf is always there
        if not bounds:
            raise MetricError(f"{name}: a histogram needs at least one finite bucket")
        if any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise MetricError(f"{name}: bucket bounds must be finite numbers")
        if any(a >= b for a, b in pairwise(bounds)):
            raise MetricError(f"{name}: bucket bounds must be strictly increasing")
        self.bounds = bounds
        self._exemplar_interval = exemplar_interval
        super().__init__(registry, name, documentation, labelnames, max_series)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds, self._exemplar_interval)

    def observe(self, value: float, trace_id: int = 0) -> None:
        self._unlabelled().observe(value, trace_id)

    def observe_traced(self, value: float, now: float | None = None) -> None:
        self._unlabelled().observe_traced(value)


# ---- the registry -------------------------------------------------------------------------


class Registry:
    """The metric families of one process, its scrape-time collectors, and the exposition.

    ``max_series`` is the default cardinality bound per family; ``exemplar_interval`` how
    often (seconds) ``observe_traced`` may replace a bucket's exemplar.
    """

    def __init__(self, *, max_series: int = 1000, exemplar_interval: float = 1.0) -> None:
        self.max_series = max_series
        self.exemplar_interval = exemplar_interval
        self._families: dict[str, _Family[CounterChild] | _Family[GaugeChild] | Histogram] = {}
        self._collectors: list[Collector] = []
        self._overflow = Counter(
            self,
            _OVERFLOW_METRIC,
            "Observations counted under the overflow series because a metric reached its "
            "label-set limit, by metric.",
            ("metric",),
            max_series=10_000,
        )
        self._families[_OVERFLOW_METRIC] = self._overflow

    def _register(self, family: _Family[_Child]) -> None:
        if family.name in self._families:
            raise MetricError(f"metric {family.name!r} is already registered")
        self._families[family.name] = family  # type: ignore[assignment]

    def counter(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        max_series: int | None = None,
    ) -> Counter:
        if not name.endswith("_total"):
            raise MetricError(f"counter {name!r} must end in _total")
        family = Counter(self, name, documentation, labelnames, max_series or self.max_series)
        self._register(family)
        return family

    def gauge(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        max_series: int | None = None,
    ) -> Gauge:
        family = Gauge(self, name, documentation, labelnames, max_series or self.max_series)
        self._register(family)
        return family

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        max_series: int | None = None,
    ) -> Histogram:
        family = Histogram(
            self,
            name,
            documentation,
            labelnames,
            max_series or self.max_series,
            buckets,
            self.exemplar_interval,
        )
        self._register(family)
        return family

    def add_collector(self, collector: Collector) -> None:
        """Run ``collector`` (sync or async) at every ``collect()``, before exposition."""
        self._collectors.append(collector)

    async def collect(self) -> None:
        """Run the collectors, in the order they were added."""
        for collector in self._collectors:
            result = collector()
            if inspect.isawaitable(result):
                await result

    def families(self) -> list[Counter | Gauge | Histogram]:
        return list(self._families.values())  # type: ignore[arg-type]

    def get(self, name: str) -> Counter | Gauge | Histogram:
        """The family named ``name`` (KeyError if none)."""
        return self._families[name]  # type: ignore[return-value]

    def sample_names(self) -> frozenset[str]:
        """Every series name this registry can expose (``x_total``, ``x_bucket``, ...)."""
        names: set[str] = set()
        for family in self._families.values():
            if family.kind == "histogram":
                names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
        return frozenset(names)

    def _overflowed(self, metric: str) -> None:
        self._overflow.labels(metric).inc()

    def expose(self, *, openmetrics: bool = False) -> bytes:
        """The text exposition: Prometheus 0.0.4, or OpenMetrics 1.0 (with exemplars)."""
        lines: list[str] = []
        for family in self._families.values():
            _expose_family(family, lines, openmetrics)  # type: ignore[arg-type]
        if openmetrics:
            lines.append("# EOF")
        lines.append("")
        return "\n".join(lines).encode("utf-8")


# ---- exposition ---------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _expose_family(
    family: Counter | Gauge | Histogram, lines: list[str], openmetrics: bool
) -> None:
    if not family._series:
        return
    name = family.name
    # OpenMetrics names the counter family without its _total suffix; Prometheus 0.0.4 with it.
    header = name.removesuffix("_total") if openmetrics and family.kind == "counter" else name
    lines.append(f"# HELP {header} {_escape_help(family.documentation, openmetrics)}")
    lines.append(f"# TYPE {header} {family.kind}")
    names = family.labelnames
    if isinstance(family, Histogram):
        bounds = [*(_number(b) for b in family.bounds), "+Inf"]
        for values, child in family.series():
            cumulative = 0
            for index, le in enumerate(bounds):
                cumulative += child.counts[index]
                bucket_labels = _labels(names, values, 'le="' + le + '"')
                line = f"{name}_bucket{bucket_labels} {cumulative}"
                exemplar = child.exemplars[index] if openmetrics else None
                if exemplar is not None:
                    trace_id, value, at = exemplar
                    line += f' # {{trace_id="{trace_id:032x}"}} {_number(value)} {at:.3f}'
                lines.append(line)
            labels = _labels(names, values)
            lines.append(f"{name}_sum{labels} {_number(child.sum)}")
            lines.append(f"{name}_count{labels} {cumulative}")
        return
    for values, value_child in family.series():
        lines.append(f"{name}{_labels(names, values)} {_number(value_child.value)}")
