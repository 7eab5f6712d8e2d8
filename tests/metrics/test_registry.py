"""The registry: families, labels, cardinality bound, and both text formats parsed back."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import TracerProvider

from orchestrator_api.metrics import ApiMetrics
from orchestrator_tasks.messages import Usage
from orchestrator_telemetry.metrics import (
    CONTENT_TYPE_OPENMETRICS,
    MAX_LABEL_VALUE,
    OVERFLOW,
    MetricError,
    Registry,
    current_trace_id,
    wants_openmetrics,
)
from orchestrator_worker.metrics import WorkerMetrics
from tests.metrics.exposition import parse, value


def test_counter_gauge_and_histogram_are_exposed_with_help_and_type() -> None:
    registry = Registry()
    registry.counter("jobs_total", "Jobs done.").inc(3)
    registry.gauge("depth", "Queue depth.").set(7)
    registry.histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0)).observe(0.5)

    families = parse(registry.expose().decode())

    assert families["jobs_total"].type == "counter"
    assert families["jobs_total"].help == "Jobs done."
    assert value(families, "jobs_total") == 3
    assert families["depth"].type == "gauge"
    assert value(families, "depth") == 7
    assert families["latency_seconds"].type == "histogram"
    assert value(families, "latency_seconds_count") == 1
    assert value(families, "latency_seconds_sum") == 0.5


def test_openmetrics_names_counter_families_without_total_and_ends_with_eof() -> None:
    registry = Registry()
    registry.counter("jobs_total", "Jobs done.").inc()

    text = registry.expose(openmetrics=True).decode()
    families = parse(text, openmetrics=True)

    assert families["jobs"].type == "counter"
    assert [s.name for s in families["jobs"].samples] == ["jobs_total"]
    assert text.endswith("# EOF\n")


def test_histogram_buckets_are_cumulative_and_end_with_inf_equal_to_count() -> None:
    registry = Registry()
    histogram = registry.histogram("h_seconds", "H.", ("op",), buckets=(0.1, 0.5, 1.0))
    child = histogram.labels("read")
    for observation in (0.05, 0.1, 0.3, 0.7, 0.9, 5.0):
        child.observe(observation)

    families = parse(registry.expose().decode())
    buckets = {
        s.labels["le"]: s.value for s in families["h_seconds"].samples if s.name.endswith("_bucket")
    }

    # le is "less or equal": 0.1 falls in the 0.1 bucket.
    assert buckets == {"0.1": 2, "0.5": 3, "1.0": 5, "+Inf": 6}
    assert value(families, "h_seconds_count", op="read") == 6
    assert value(families, "h_seconds_sum", op="read") == pytest.approx(7.05)


def test_label_values_are_escaped_and_read_back_intact() -> None:
    registry = Registry()
    counter = registry.counter("odd_total", "Odd labels.", ("value",))
    tricky = 'back\\slash "quoted" new\nline {braces}'
    counter.labels(tricky).inc()

    for openmetrics in (False, True):
        families = parse(registry.expose(openmetrics=openmetrics).decode(), openmetrics=openmetrics)
        (sample,) = [s for f in families.values() for s in f.samples if s.name == "odd_total"]
        assert sample.labels == {"value": tricky}


def test_help_text_is_escaped() -> None:
    registry = Registry()
    registry.gauge("g", 'Line one\nline "two" \\ end.').set(1)

    for openmetrics in (False, True):
        families = parse(registry.expose(openmetrics=openmetrics).decode(), openmetrics=openmetrics)
        assert families["g"].help == 'Line one\nline "two" \\ end.'


def test_special_float_values_use_the_format_spellings() -> None:
    registry = Registry()
    gauge = registry.gauge("g", "G.", ("kind",))
    gauge.labels("inf").set(math.inf)
    gauge.labels("nan").set(math.nan)
    gauge.labels("neg").set(-math.inf)

    text = registry.expose().decode()

    assert 'g{kind="inf"} +Inf' in text
    assert 'g{kind="nan"} NaN' in text
    assert 'g{kind="neg"} -Inf' in text


def test_labels_returns_the_same_child_for_the_same_values() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "C.", ("status",))

    assert counter.labels("200") is counter.labels("200")
    assert counter.labels(200) is counter.labels("200")


def test_a_family_past_its_series_limit_counts_new_label_sets_as_overflow() -> None:
    registry = Registry()
    counter = registry.counter("by_model_total", "By model.", ("model",), max_series=3)
    for index in range(10):
        counter.labels(f"model-{index}").inc()

    families = parse(registry.expose().decode())

    models = {s.labels["model"] for s in families["by_model_total"].samples}
    assert models == {"model-0", "model-1", "model-2", OVERFLOW}
    assert value(families, "by_model_total", model=OVERFLOW) == 7
    overflowed = value(
        families, "orchestrator_metrics_series_overflow_total", metric="by_model_total"
    )
    assert overflowed == 7


def test_long_label_values_are_cut() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "C.", ("model",))
    counter.labels("m" * 500).inc()

    families = parse(registry.expose().decode())

    (sample,) = families["c_total"].samples
    assert sample.labels["model"] == "m" * MAX_LABEL_VALUE


def test_labelled_families_without_series_are_not_exposed() -> None:
    registry = Registry()
    registry.counter("unused_total", "Unused.", ("x",))

    assert "unused_total" not in registry.expose().decode()


@pytest.mark.parametrize(
    ("kind", "name", "labels", "buckets"),
    [
        ("counter", "no_suffix", (), None),
        ("gauge", "bad-name", (), None),
        ("gauge", "g", ("le",), None),
        ("histogram", "h", ("__x",), None),
        ("histogram", "h", (), (1.0, 0.5)),
        ("histogram", "h", (), ()),
        ("gauge", "g", ("a", "a"), None),
    ],
)
def test_invalid_definitions_are_refused(
    kind: str, name: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None
) -> None:
    registry = Registry()
    define: Callable[[], object] = {
        "counter": lambda: registry.counter(name, "x", labels),
        "gauge": lambda: registry.gauge(name, "x", labels),
        "histogram": lambda: registry.histogram(name, "x", labels, buckets=buckets or ()),
    }[kind]
    with pytest.raises(MetricError):
        define()


def test_a_name_registers_once_and_counters_only_go_up() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "C.")
    with pytest.raises(MetricError):
        registry.counter("c_total", "again")
    with pytest.raises(MetricError):
        counter.inc(-1)
    with pytest.raises(MetricError):
        registry.counter("l_total", "L.", ("a",)).labels("x", "y")


def test_exemplars_appear_in_openmetrics_only_on_the_observed_bucket() -> None:
    registry = Registry()
    histogram = registry.histogram("h_seconds", "H.", buckets=(0.1, 1.0))
    trace_id = 0x0123456789ABCDEF0123456789ABCDEF
    before = time.time()
    histogram.observe(0.5, trace_id)
    histogram.observe(0.05)

    plain = registry.expose().decode()
    families = parse(registry.expose(openmetrics=True).decode(), openmetrics=True)

    assert " # " not in plain
    with_exemplar = [s for s in families["h_seconds"].samples if s.exemplar is not None]
    assert [s.labels["le"] for s in with_exemplar] == ["1.0"]
    exemplar = with_exemplar[0].exemplar
    assert exemplar is not None
    assert exemplar.labels == {"trace_id": "0123456789abcdef0123456789abcdef"}
    assert exemplar.value == 0.5
    assert exemplar.timestamp is not None
    assert before - 1 <= exemplar.timestamp <= time.time() + 1


def test_observe_traced_takes_the_sampled_current_span_as_exemplar() -> None:
    registry = Registry(exemplar_interval=0.0)
    histogram = registry.histogram("h_seconds", "H.", buckets=(1.0,))
    tracer = TracerProvider().get_tracer("test")

    histogram.observe_traced(0.5)  # no span: no exemplar
    families = parse(registry.expose(openmetrics=True).decode(), openmetrics=True)
    assert families["h_seconds"].samples[0].exemplar is None
    assert current_trace_id() == 0

    with tracer.start_as_current_span("request") as span:
        trace_id = span.get_span_context().trace_id
        assert current_trace_id() == trace_id
        histogram.observe_traced(0.25)

    families = parse(registry.expose(openmetrics=True).decode(), openmetrics=True)
    exemplar = families["h_seconds"].samples[0].exemplar
    assert exemplar is not None
    assert exemplar.labels == {"trace_id": f"{trace_id:032x}"}
    assert exemplar.value == 0.25


def test_observe_traced_keeps_one_exemplar_per_bucket_per_interval() -> None:
    registry = Registry(exemplar_interval=60.0)
    histogram = registry.histogram("h_seconds", "H.", buckets=(1.0,))
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("first") as span:
        first = span.get_span_context().trace_id
        histogram.observe_traced(0.5)
    with tracer.start_as_current_span("second"):
        histogram.observe_traced(0.6)

    families = parse(registry.expose(openmetrics=True).decode(), openmetrics=True)
    exemplar = families["h_seconds"].samples[0].exemplar
    assert exemplar is not None
    assert exemplar.labels["trace_id"] == f"{first:032x}"
    assert value(families, "h_seconds_count") == 2


async def test_collectors_run_before_exposition_sync_and_async() -> None:
    registry = Registry()
    gauge = registry.gauge("g", "G.")
    calls: list[str] = []

    def sync() -> None:
        calls.append("sync")
        gauge.set(1)

    async def later() -> None:
        calls.append("async")
        gauge.inc()

    registry.add_collector(sync)
    registry.add_collector(later)
    await registry.collect()

    assert calls == ["sync", "async"]
    assert value(parse(registry.expose().decode()), "g") == 2


def test_sample_names_lists_every_series_name() -> None:
    registry = Registry()
    registry.counter("c_total", "C.")
    registry.gauge("g", "G.")
    registry.histogram("h_seconds", "H.")

    assert {"c_total", "g", "h_seconds_bucket", "h_seconds_sum", "h_seconds_count"} <= (
        registry.sample_names()
    )


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("text/plain;version=0.0.4", False),
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,"
            "*/*;q=0.1",
            True,
        ),
    ],
)
def test_openmetrics_is_chosen_from_the_accept_header(accept: str | None, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected
    assert CONTENT_TYPE_OPENMETRICS.startswith("application/openmetrics-text")


def test_the_services_metrics_pass_promtools_lint() -> None:
    """Naming conventions (units, _total, help texts) as Prometheus' own linter sees them."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):  # CI runs tests/run.sh, which provides it: never skip there
            pytest.fail("promtool is missing (tests/run.sh extracts it from Debian's prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    registry = Registry()
    api, worker = ApiMetrics(registry), WorkerMetrics(registry)
    api.task_accepted("acme", None)
    api.task_rate_limited("acme")
    api.http.labels("GET", "/v1/tasks/{task_id}", "200").observe(0.01)
    api.open_streams.set(1)
    worker.attempt_started("echo", "echo", 1, time.time())
    worker.provider_called("echo", "echo", 0.1)
    worker.task_succeeded("echo", "echo", Usage(3, 4), 0.001, run_seconds=0.1)
    worker.task_failed(None, None, "invalid_model")
    worker.breaker_changed("openai", "closed", "open")
    worker.provider_paused("openai", 20.0, "rate_limit")
    worker.paused_seconds.labels("openai").set(19.5)
    worker.in_flight.set(1)

    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=registry.expose(),
        capture_output=True,
        timeout=60,
    )

    assert result.returncode == 0, (result.stdout + result.stderr).decode()
