"""``bench --tracing RATIO``: the services export their spans, as the compose stack does.

Each benchmark then starts ``tests.bench.otlp_sink`` as a process of its own (listed, pinned
and stopped like the others) on a free loopback port, and gives the orchestrator services
``JAEGER_URI=127.0.0.1:<port>``, ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` and
``OTEL_TRACES_SAMPLER_ARG=RATIO``; an explicit ``--service-env`` value still wins. The bare
baselines never trace. ``describe`` says, for the JSON, what the services actually ran with.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from .processes import (
    BenchError,
    Processes,
    Service,
    bench_module_env,
    free_port,
    pin,
    usable_cpus,
    wait_http_ok,
)

__all__ = [
    "OFF",
    "Sink",
    "SinkWindow",
    "describe",
    "is_tracing_variable",
    "load_cpus",
    "ratio",
    "sink_env",
    "start_sink",
]

OFF = "off (no JAEGER_URI / OTEL_* in the services' environment)"
#: Where the services' telemetry looks for an OTLP endpoint, in this order.
ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "JAEGER_URI",
)
SINK_WHAT = (
    "tests/bench/otlp_sink.py: one process per benchmark on a free loopback port, pinned with "
    "the load generator and redis; parses each export and counts its spans, keeps none"
)


def ratio(text: str) -> float:
    """``--tracing``'s argument: a sampling ratio in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio in (0, 1], got {text!r}")
    return value


def is_tracing_variable(name: str) -> bool:
    """Whether the services' telemetry reads ``name`` (``service_env`` drops the caller's)."""
    return name.startswith("OTEL_") or name == "JAEGER_URI"


def sink_env(port: int | str, sampling: float) -> dict[str, str]:
    """What the services get to export every sampled span to the sink on ``port``."""
    return {
        "JAEGER_URI": f"127.0.0.1:{port}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(sampling),
    }


def load_cpus() -> set[int] | None:
    """The CPU the load generator and redis get in the HTTP benchmark (None on one CPU)."""
    cpus = usable_cpus()
    return {cpus[1]} if len(cpus) >= 2 else None


@attrs.frozen
class Sink:
    """A started ``otlp_sink`` process."""

    service: Service
    port: int

    def stats(self, timeout: float = 5.0) -> dict[str, int]:
        """Its counters now: ``requests``, ``spans``, ``rejected``."""
        url = f"http://127.0.0.1:{self.port}/stats"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                counters: dict[str, int] = orjson.loads(response.read())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise BenchError(f"the OTLP sink did not answer {url}: {exc}") from exc
        return counters


def start_sink(processes: Processes, cpus: set[int] | None, timeout: float) -> Sink:
    """Start the sink on a free loopback port and wait until it answers."""
    port = free_port()
    command = [sys.executable, "-m", "tests.bench.otlp_sink", "--port", str(port)]
    service = processes.start("otlp-sink", command, bench_module_env(os.environ), cpus=cpus)
    wait_http_ok(f"http://127.0.0.1:{port}/stats", timeout, service)
    if cpus:
        pin(service.pid, cpus)  # again: threads started since launch
    return Sink(service, port)


@attrs.define
class SinkWindow:
    """The sink's counts over the measured phase, and once the services stopped.

    Spans leave a service in batches (every 5 s, or 512 at a time), so the measured phase's
    count is close, not exact; ``total`` (read after the services flushed on SIGTERM) is
    every span exported during the run, warm-up included.
    """

    sink: Sink
    _before: dict[str, int] = attrs.field(factory=dict)
    result: dict[str, Any] = attrs.field(factory=dict)

    def start(self) -> None:
        self._before = self.sink.stats()

    def stop(self) -> None:
        after = self.sink.stats()
        self.result["during_measurement"] = {
            name: after[name] - self._before.get(name, 0) for name in ("requests", "spans")
        }

    def finish(self) -> dict[str, Any]:
        """After the services stopped: the totals too; the ``"otlp_sink"`` of a result."""
        total = self.sink.stats()
        self.result["total"] = {name: total[name] for name in ("requests", "spans", "rejected")}
        self.result["port"] = self.sink.port
        return self.result


def describe(sampling: float | None, overrides: Mapping[str, str]) -> str | dict[str, Any]:
    """The JSON's ``"tracing"``: what the orchestrator services ran with.

    ``sampling`` is ``--tracing`` (None: not given); ``overrides`` is ``--service-env``,
    which wins over the sink's settings and may turn tracing on by itself.
    """
    given = {name: value for name, value in overrides.items() if is_tracing_variable(name)}
    if sampling is None and not given:
        return OFF
    effective = {**(sink_env("<sink port>", sampling) if sampling is not None else {}), **given}
    redirected = any(name in given for name in ENDPOINT_VARIABLES)  # spans go elsewhere
    return {
        "ratio": _root_ratio(effective),
        "sampler": effective.get("OTEL_TRACES_SAMPLER", "parentbased_always_on (default)"),
        "exporter": _exporter(effective, to_sink=sampling is not None and not redirected),
        "sink": SINK_WHAT if sampling is not None else None,
        "services_env": {name: _shown(name, value) for name, value in effective.items()},
        "set_by_service_env": sorted(given),
        "baselines": "never traced (tests/bench/bare_*.py have no telemetry)",
    }


def _root_ratio(env: Mapping[str, str]) -> float | str | None:
    """The share of new traces sampled, as the SDK reads the sampler variables."""
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler.endswith("always_on"):
        return 1.0
    if sampler.endswith("always_off"):
        return 0.0
    if sampler.endswith("traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            return float(raw)
        except ValueError:
            return raw  # the services refuse to start on it; the run says so
    return None


def _exporter(env: Mapping[str, str], *, to_sink: bool) -> str:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none (OTEL_SDK_DISABLED=true)"
    if "otlp" not in env.get("OTEL_TRACES_EXPORTER", "otlp").lower():
        return f"none (OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']})"
    if to_sink:
        return "OTLP/HTTP to a local sink"
    endpoint = next((name for name in ENDPOINT_VARIABLES if env.get(name)), None)
    if endpoint is None:
        return "none (no endpoint: spans are made but not exported)"
    return f"OTLP/HTTP to {_redact_url(env[endpoint])} (from {endpoint}, --service-env)"


def _shown(name: str, value: str) -> str:
    if name.endswith("_HEADERS"):
        return "<redacted>"
    if name in ENDPOINT_VARIABLES:
        return _redact_url(value)
    return value


def _redact_url(url: str) -> str:
    """``url`` (or ``host:port``) without credentials or query string."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, slash, path = rest.split("?", 1)[0].partition("/")
    return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}"
