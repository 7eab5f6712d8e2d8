"""The bounded families on prometheus_client: label-set limit, cut values, cached children,
trace exemplars, and refreshes run before a scrape."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from orchestrator_telemetry.metrics import (
    MAX_LABEL_VALUE,
    OTHER,
    OVERFLOW,
    MetricError,
    add_refresh,
    counter,
    gauge,
    histogram,
    refresh,
)
from tests.metrics.exposition import Family, parse, value


def plain(registry: CollectorRegistry) -> dict[str, Family]:
    return parse(generate_latest(registry).decode())


def openmetrics(registry: CollectorRegistry) -> dict[str, Family]:
    return parse(generate_openmetrics(registry).decode(), openmetrics=True)


def test_labels_returns_the_same_child_for_the_same_values() -> None:
    registry = CollectorRegistry()
    statuses = counter(registry, "c_total", "C.", ("status",))

    assert statuses.labels("200") is statuses.labels("200")
    assert statuses.labels(200) is statuses.labels("200")


def test_a_capped_label_keeps_its_first_values_and_counts_later_ones_as_other() -> None:
    registry = CollectorRegistry()
    tokens = counter(
        registry,
        "tokens_total",
        "Tokens.",
        ("tenant", "model", "direction"),
        capped=("model",),
        max_label_values=3,
    )
    for index in range(10):
        for direction in ("input", "output"):
            tokens.labels("acme", f"made-up-{index}", direction).inc()
    tokens.labels("acme", "made-up-1", "input").inc()  # a kept value stays itself

    families = plain(registry)

    models = {s.labels["model"] for s in families["tokens_total"].samples}
    assert models == {"made-up-0", "made-up-1", "made-up-2", OTHER}
    assert value(families, "tokens_total", tenant="acme", model=OTHER, direction="input") == 7
    assert value(families, "tokens_total", tenant="acme", model="made-up-1", direction="input") == 2
    # the uncapped labels keep their values: both directions, under "other" too
    directions = {s.labels["direction"] for s in families["tokens_total"].samples}
    assert directions == {"input", "output"}


def test_a_capped_label_must_be_one_of_the_family_s_labels() -> None:
    with pytest.raises(MetricError, match="capped"):
        counter(CollectorRegistry(), "c_total", "C.", ("model",), capped=("tenant",))


def test_a_family_past_its_series_limit_counts_new_label_sets_as_overflow() -> None:
    registry = CollectorRegistry()
    by_model = counter(registry, "by_model_total", "By model.", ("model",), max_series=3)
    for index in range(10):
        by_model.labels(f"model-{index}").inc()

    families = plain(registry)

    models = {s.labels["model"] for s in families["by_model_total"].samples}
    assert models == {"model-0", "model-1", "model-2", OVERFLOW}
    assert value(families, "by_model_total", model=OVERFLOW) == 7
    overflowed = value(
        families, "orchestrator_metrics_series_overflow_total", metric="by_model_total"
    )
    assert overflowed == 7


def test_the_overflow_counter_shows_only_families_that_overflowed() -> None:
    registry = CollectorRegistry()
    counter(registry, "a_total", "A.", ("x",)).labels("1").inc()
    gauge(registry, "b", "B.", ("x",), max_series=1).labels("1").set(1)

    assert "orchestrator_metrics_series_overflow_total" not in {
        s.name for f in plain(registry).values() for s in f.samples
    }


def test_families_of_one_registry_share_one_overflow_counter() -> None:
    registry = CollectorRegistry()
    first = gauge(registry, "first", "F.", ("x",), max_series=1)
    second = histogram(registry, "second_seconds", "S.", ("x",), buckets=(1.0,), max_series=1)
    for index in range(3):
        first.labels(index).set(1)
        second.labels(index).observe(0.5)

    families = plain(registry)

    overflow = "orchestrator_metrics_series_overflow_total"
    assert value(families, overflow, metric="first") == 2
    assert value(families, overflow, metric="second_seconds") == 2
    assert value(families, "second_seconds_count", x=OVERFLOW) == 2


def test_long_label_values_are_cut() -> None:
    registry = CollectorRegistry()
    counter(registry, "c_total", "C.", ("model",)).labels("m" * 500).inc()

    (sample,) = plain(registry)["c_total"].samples

    assert sample.labels["model"] == "m" * MAX_LABEL_VALUE


def test_label_values_are_escaped_and_read_back_intact() -> None:
    registry = CollectorRegistry()
    tricky = 'back\\slash "quoted" new\nline {braces}'
    counter(registry, "odd_total", "Odd labels.", ("value",)).labels(tricky).inc()

    for families in (plain(registry), openmetrics(registry)):
        (sample,) = [s for f in families.values() for s in f.samples if s.name == "odd_total"]
        assert sample.labels == {"value": tricky}


def test_histogram_buckets_are_cumulative_and_le_is_less_or_equal() -> None:
    registry = CollectorRegistry()
    child = histogram(registry, "h_seconds", "H.", ("op",), buckets=(0.1, 0.5, 1.0)).labels("r")
    for observation in (0.05, 0.1, 0.3, 0.7, 0.9, 5.0):
        child.observe(observation)

    families = plain(registry)
    buckets = {
        s.labels["le"]: s.value for s in families["h_seconds"].samples if s.name.endswith("_bucket")
    }

    assert buckets == {"0.1": 2, "0.5": 3, "1.0": 5, "+Inf": 6}
    assert value(families, "h_seconds_count", op="r") == 6
    assert value(families, "h_seconds_sum", op="r") == pytest.approx(7.05)


def test_counters_and_histograms_have_no_created_series() -> None:
    registry = CollectorRegistry()
    counter(registry, "c_total", "C.", ("x",)).labels("1").inc()
    histogram(registry, "h_seconds", "H.", ("x",), buckets=(1.0,)).labels("1").observe(0.5)

    assert not [name for name in plain(registry) if name.endswith("_created")]


def test_an_exemplar_appears_in_openmetrics_only_on_the_observed_bucket() -> None:
    registry = CollectorRegistry()
    child = histogram(registry, "h_seconds", "H.", ("x",), buckets=(0.1, 1.0)).labels("1")
    trace_id = 0x0123456789ABCDEF0123456789ABCDEF
    before = time.time()
    child.observe(0.5, trace_id)
    child.observe(0.05)

    families = openmetrics(registry)

    assert " # " not in generate_latest(registry).decode()
    with_exemplar = [s for s in families["h_seconds"].samples if s.exemplar is not None]
    assert [s.labels["le"] for s in with_exemplar] == ["1.0"]
    exemplar = with_exemplar[0].exemplar
    assert exemplar is not None
    assert exemplar.labels == {"trace_id": "0123456789abcdef0123456789abcdef"}
    assert exemplar.value == 0.5
    assert exemplar.timestamp is not None
    assert before - 1 <= exemplar.timestamp <= time.time() + 1


def test_observe_traced_takes_the_sampled_current_span_as_exemplar() -> None:
    registry = CollectorRegistry()
    family = histogram(registry, "h_seconds", "H.", ("x",), buckets=(1.0,), exemplar_interval=0)
    child = family.labels("1")
    tracer = TracerProvider().get_tracer("test")
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")

    child.observe_traced(0.5)  # no span: no exemplar
    with unsampled.start_as_current_span("not sampled"):
        child.observe_traced(0.5)  # not in Tempo: no exemplar
    assert openmetrics(registry)["h_seconds"].samples[0].exemplar is None

    with tracer.start_as_current_span("request") as span:
        trace_id = span.get_span_context().trace_id
        child.observe_traced(0.25)

    exemplar = openmetrics(registry)["h_seconds"].samples[0].exemplar
    assert exemplar is not None
    assert exemplar.labels == {"trace_id": f"{trace_id:032x}"}
    assert exemplar.value == 0.25


def test_observe_traced_keeps_one_exemplar_per_bucket_per_interval() -> None:
    registry = CollectorRegistry()
    family = histogram(registry, "h_seconds", "H.", ("x",), buckets=(1.0,), exemplar_interval=60)
    child = family.labels("1")
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("first") as span:
        first = span.get_span_context().trace_id
        child.observe_traced(0.5)
    with tracer.start_as_current_span("second"):
        child.observe_traced(0.6)

    families = openmetrics(registry)
    exemplar = families["h_seconds"].samples[0].exemplar
    assert exemplar is not None
    assert exemplar.labels["trace_id"] == f"{first:032x}"
    assert value(families, "h_seconds_count") == 2


@pytest.mark.parametrize(
    ("kind", "name", "labels", "buckets"),
    [
        ("counter", "no_suffix", ("x",), None),
        ("gauge", "bad-name", ("x",), None),
        ("gauge", "g", ("le",), None),
        ("gauge", "g", (), None),
        ("histogram", "h", ("__x",), None),
        ("histogram", "h", ("x",), (1.0, 0.5)),
        ("histogram", "h", ("x",), (1.0, 1.0)),
        ("histogram", "h", ("x",), ()),
        ("histogram", "h", ("x",), (float("nan"),)),
        ("gauge", "g", ("a", "a"), None),
    ],
)
def test_invalid_definitions_are_refused(
    kind: str, name: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None
) -> None:
    registry = CollectorRegistry()
    define: Callable[[], object] = {
        "counter": lambda: counter(registry, name, "x", labels),
        "gauge": lambda: gauge(registry, name, "x", labels),
        "histogram": lambda: histogram(registry, name, "x", labels, buckets=buckets or ()),
    }[kind]
    with pytest.raises(MetricError):
        define()


def test_a_name_registers_once_and_label_values_must_match_the_names() -> None:
    registry = CollectorRegistry()
    counter(registry, "c_total", "C.", ("a",))
    with pytest.raises(MetricError):
        counter(registry, "c_total", "again", ("a",))
    with pytest.raises(MetricError):
        counter(registry, "l_total", "L.", ("a",)).labels("x", "y")


async def test_refreshes_run_in_order_before_a_scrape() -> None:
    registry = CollectorRegistry()
    read = Gauge("g", "G.", registry=registry)
    calls: list[str] = []

    async def first() -> None:
        calls.append("first")
        read.set(1)

    async def second() -> None:
        calls.append("second")
        read.inc()

    add_refresh(registry, first)
    add_refresh(registry, second)
    await refresh(registry)
    await refresh(CollectorRegistry())  # none: nothing to run

    assert calls == ["first", "second"]
    assert value(plain(registry), "g") == 2
