"""The worker's settings, read once at startup from environment variables."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from orchestrator_broker import DEFAULT_DEAD_LETTER_MAXLEN
from orchestrator_broker import ConfigError as BrokerConfigError
from orchestrator_broker.redis_settings import RedisSettings
from orchestrator_telemetry import TelemetrySettings
from orchestrator_telemetry.logs import LogFormat

from .errors import ConfigError
from .limits import parse_concurrency
from .pricing import Price, load_prices_file, parse_prices
from .providers.settings import ProviderSettings
from .retry import RetryPolicy
from .routing import parse_aliases

_T = TypeVar("_T")

_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LOG_FORMATS = ("plain", "json")
#: Where a worker serves ``GET /metrics`` unless ``METRICS_PORT`` says otherwise.
DEFAULT_METRICS_PORT = 9100


@attrs.frozen
class WorkerSettings:
    """Everything a worker process reads from its environment (unknown variables are ignored).

    ============================ ========================= =======================================
    Variable                     Default                   Meaning
    ============================ ========================= =======================================
    ``APP_ID``                   ``ai-orchestrator_worker`` service name in traces and logs
    ``REDIS_URI``                ``redis://localhost:6379/0`` broker address: ``host:port``,
                                                           ``redis://[user:pass@]host:port/db``
                                                           or ``rediss://...``
    ``JAEGER_URI``               (unset)                   trace export endpoint (unset: no
                                                           export)
    ``REDIS_STREAM_ID``          ``tasks``                 stream the tasks are read from
    ``REDIS_RESULTS_STREAM_ID``  ``results``               stream result events are written to
    ``CONSUMER_GROUP``           ``workers``               consumer group shared by all workers
    ``CONSUMER_NAME``            ``<APP_ID>-<host>-<pid>`` this process's name in the group
                                                           (stable across container restarts)
    ``NUMBER_OF_WORKERS``        ``5``                     tasks run at once by this process;
                                                           they are async, so hundreds to a few
                                                           thousand are fine
    ``DEFAULT_MODEL``            ``echo``                  model for tasks that name none
    ``TASK_TIMEOUT_SECONDS``     ``300``                   a provider call longer than this
                                                           fails the task with ``timeout``
    ``LEASE_SECONDS``            ``30``                    a crashed worker's tasks are
                                                           reclaimed by others after this long
    ``MAX_ATTEMPTS``             ``5``                     provider attempts per task: a task
                                                           still failing retryably after this
                                                           many fails (the last error's type)
                                                           and is dead-lettered; a delivery past
                                                           it (earlier ones crashed) fails with
                                                           ``attempts_exhausted``, dead-lettered
    ``MAX_DELIVERIES``           ``MAX_ATTEMPTS + 1``      the broker's backstop: a task
                                                           delivered this often is dead-lettered
                                                           silently; must exceed MAX_ATTEMPTS,
                                                           so the worker's limit bites first
                                                           and the client hears of it
    ``RETRY_BASE_SECONDS``       ``1``                     backoff of a retryable failure:
    ``RETRY_MAX_SECONDS``        ``60``                    random in 0..min(max, base*2^(n-1))
                                                           after attempt n, plus any wait the
                                                           provider asked for (Retry-After),
                                                           which also pauses the provider for
                                                           every task; see ``retry``, ``breaker``
    ``MODEL_ALIASES``            (none)                    ``fast=openai/gpt-4o-mini|gemini/
                                                           gemini-2.0-flash,smart=openai/gpt-4o``:
                                                           names for model lists, later ones the
                                                           fallbacks (see ``routing``)
    ``PROVIDER_CONCURRENCY``     (no limits)               ``openai=50,gemini=20``: calls open at
                                                           once per provider and process
    ``BREAKER_FAILURES``         ``5``                     retryable failures in a row that open
                                                           a provider's circuit (0: never)
    ``BREAKER_COOLDOWN_SECONDS`` ``30``                    how long an open circuit sends no
                                                           call before one probe (see
                                                           ``breaker``)
    ``MODEL_PRICES``             (none)                    ``openai/gpt-4o-mini=0.15:0.60,...``:
                                                           USD per million input:output tokens,
                                                           for ``cost_usd`` (see ``pricing``)
    ``MODEL_PRICES_FILE``        (none)                    the same as a JSON file
                                                           ``{"model": {"input": x, "output":
                                                           y}}``; MODEL_PRICES entries win
    ``DEAD_LETTER_MAXLEN``       ``10000``                 dead letters kept per stream (the
                                                           newest; 0 keeps all): each holds
                                                           its task, prompt included
    ``SHUTDOWN_GRACE_SECONDS``   ``25``                    on SIGTERM, how long in-flight tasks
                                                           may finish before being handed back
    ``DELTA_FLUSH_MS``           ``100``                   answer text is coalesced into one
                                                           ``delta`` event per task this often
                                                           (0: publish each chunk at once)
    ``LOG_LEVEL``                ``INFO``                  DEBUG, INFO, WARNING, ERROR
    ``LOG_FORMAT``               ``plain``                 ``plain`` or ``json`` (one object per
                                                           line, with trace ids)
    ``METRICS_PORT``             ``9100``                  port of ``GET /metrics`` (Prometheus;
                                                           the image's healthcheck probes it);
                                                           0 picks a free port. Set: a port that
                                                           cannot be bound stops the worker.
                                                           Unset: the worker runs on without
                                                           metrics (several on one host)
    ``METRICS_HOST``             ``127.0.0.1``             address it binds: loopback by
                                                           default; ``0.0.0.0`` in containers
                                                           so Prometheus can scrape it
    ============================ ========================= =======================================

    The ``OTEL_*`` variables (sampler, headers, ``OTEL_SDK_DISABLED``...) are read by
    ``orchestrator_telemetry.TelemetrySettings`` into ``telemetry``; the provider variables
    (``OPENAI_API_KEY``, ``GEMINI_API_KEY``, base URLs, timeouts) by
    ``providers.ProviderSettings`` into ``providers``.

    A malformed value raises ``ConfigError`` (or ``TelemetryConfigError`` for the trace
    settings) naming the variable.
    """

    app_id: str = "ai-orchestrator_worker"
    redis_uri: str = attrs.field(default="redis://localhost:6379/0", repr=False)
    jaeger_uri: str | None = None
    stream: str = "tasks"
    results_stream: str = "results"
    consumer_group: str = "workers"
    consumer_name: str | None = None
    concurrency: int = 5
    default_model: str = "echo"
    task_timeout: float = 300.0
    lease_seconds: float = 30.0
    max_attempts: int = 5
    max_deliveries: int = 6
    dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN
    retry_base: float = 1.0
    retry_max: float = 60.0
    model_aliases: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)
    provider_concurrency: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0
    model_prices: Mapping[str, Price] = attrs.field(factory=dict, hash=False, repr=False)
    shutdown_grace: float = 25.0
    delta_flush_ms: float = 100.0
    log_level: str = "INFO"
    log_format: LogFormat = "plain"
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: METRICS_PORT unset, DEFAULT_METRICS_PORT
    telemetry: TelemetrySettings | None = attrs.field(default=None, repr=False)
    providers: ProviderSettings | None = attrs.field(default=None, repr=False)

    @property
    def delta_flush_interval(self) -> float:
        """``DELTA_FLUSH_MS`` in seconds."""
        return self.delta_flush_ms / 1000.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerSettings:
        """Read the variables above from ``environ``; missing or empty ones take defaults."""
        defaults = cls()
        values: dict[str, Any] = {}

        def read(variable: str, parse: Callable[[str, str], _T]) -> _T | None:
            raw = environ.get(variable, "").strip()
            return parse(variable, raw) if raw else None

        spec: dict[str, tuple[str, Callable[[str, str], Any]]] = {
            "app_id": ("APP_ID", _name),
            "redis_uri": ("REDIS_URI", _redis_uri),
            "jaeger_uri": ("JAEGER_URI", _text),
            "stream": ("REDIS_STREAM_ID", _name),
            "results_stream": ("REDIS_RESULTS_STREAM_ID", _name),
            "consumer_group": ("CONSUMER_GROUP", _name),
            "consumer_name": ("CONSUMER_NAME", _name),
            "concurrency": ("NUMBER_OF_WORKERS", _int_between(1, 100_000)),
            "default_model": ("DEFAULT_MODEL", _text),
            "task_timeout": ("TASK_TIMEOUT_SECONDS", _seconds(positive=True)),
            "lease_seconds": ("LEASE_SECONDS", _seconds(positive=True)),
            "max_attempts": ("MAX_ATTEMPTS", _int_between(1, 999)),
            "max_deliveries": ("MAX_DELIVERIES", _int_between(2, 1_000)),
            "dead_letter_maxlen": ("DEAD_LETTER_MAXLEN", _int_between(0, 10**9)),
            "retry_base": ("RETRY_BASE_SECONDS", _seconds(positive=False)),
            "retry_max": ("RETRY_MAX_SECONDS", _seconds(positive=False)),
            "model_aliases": ("MODEL_ALIASES", parse_aliases),
            "provider_concurrency": ("PROVIDER_CONCURRENCY", parse_concurrency),
            "breaker_failures": ("BREAKER_FAILURES", _int_between(0, 1_000_000)),
            "breaker_cooldown": ("BREAKER_COOLDOWN_SECONDS", _seconds(positive=True)),
            "shutdown_grace": ("SHUTDOWN_GRACE_SECONDS", _seconds(positive=False)),
            "delta_flush_ms": ("DELTA_FLUSH_MS", _seconds(positive=False)),
            "log_level": ("LOG_LEVEL", _choice(_LOG_LEVELS, upper=True)),
            "log_format": ("LOG_FORMAT", _choice(_LOG_FORMATS, upper=False)),
            "metrics_host": ("METRICS_HOST", _host),
            "metrics_port": ("METRICS_PORT", _int_between(0, 65_535)),
        }
        for field, (variable, parse) in spec.items():
            value = read(variable, parse)
            if value is not None:
                values[field] = value
        prices = read("MODEL_PRICES_FILE", load_prices_file) or {}
        prices.update(read("MODEL_PRICES", parse_prices) or {})
        values["model_prices"] = prices
        _check_attempts(values, defaults)
        values["providers"] = ProviderSettings.from_env(environ)
        values["telemetry"] = TelemetrySettings.from_env(
            environ, default_service_name=values.get("app_id", defaults.app_id)
        )
        settings = attrs.evolve(defaults, **values)
        if settings.results_stream == settings.stream:
            raise ConfigError("REDIS_RESULTS_STREAM_ID", "must differ from REDIS_STREAM_ID")
        if settings.retry_max < settings.retry_base:
            raise ConfigError(
                "RETRY_MAX_SECONDS",
                f"{settings.retry_max:g} is less than RETRY_BASE_SECONDS ({settings.retry_base:g})",
            )
        return settings

    @property
    def metrics_address(self) -> tuple[str, int]:
        """Where ``GET /metrics`` listens: ``METRICS_HOST`` and ``METRICS_PORT`` (9100)."""
        port = DEFAULT_METRICS_PORT if self.metrics_port is None else self.metrics_port
        return self.metrics_host, port

    @property
    def retry_policy(self) -> RetryPolicy:
        """``MAX_ATTEMPTS`` and the ``RETRY_*`` backoff."""
        return RetryPolicy(max_attempts=self.max_attempts, base=self.retry_base, cap=self.retry_max)

    @property
    def log_level_number(self) -> int:
        """``LOG_LEVEL`` as a ``logging`` level number."""
        return logging.getLevelNamesMapping()[self.log_level]


def _check_attempts(values: dict[str, Any], defaults: WorkerSettings) -> None:
    """MAX_ATTEMPTS < MAX_DELIVERIES, filling in whichever is unset.

    The worker reports and dead-letters a task itself once its attempts are spent, either
    after its last retryable failure or when a delivery arrives past ``MAX_ATTEMPTS``
    (earlier ones crashed). The broker's own ``MAX_DELIVERIES`` limit dead-letters without
    a word to the client, so it must leave the worker that one delivery more.
    """
    attempts: int | None = values.get("max_attempts")
    deliveries: int | None = values.get("max_deliveries")
    if attempts is None and deliveries is None:
        return
    if deliveries is None:
        assert attempts is not None
        values["max_deliveries"] = attempts + 1
        return
    if attempts is None:
        values["max_attempts"] = attempts = min(defaults.max_attempts, deliveries - 1)
    if attempts >= deliveries:
        raise ConfigError(
            "MAX_ATTEMPTS",
            f"{attempts} must be less than MAX_DELIVERIES ({deliveries}): the broker "
            "dead-letters silently at MAX_DELIVERIES, the worker reports to the client",
        )


def _text(_: str, raw: str) -> str:
    return raw


def _host(variable: str, raw: str) -> str:
    if any(ch.isspace() or ch in "/@" for ch in raw):
        raise ConfigError(variable, f"{raw!r} is not a host name or address")
    return raw


def _redis_uri(variable: str, raw: str) -> str:
    try:
        RedisSettings.from_uri(raw)
    except BrokerConfigError as exc:
        raise ConfigError(variable, str(exc)) from None
    return raw


def _name(variable: str, raw: str) -> str:
    if not _NAME.match(raw):
        raise ConfigError(variable, f"{raw!r} may only hold letters, digits and _ . : -")
    return raw


def _int_between(low: int, high: int) -> Callable[[str, str], int]:
    def parse(variable: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(variable, f"{raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise ConfigError(variable, f"{value} is outside {low}..{high}")
        return value

    return parse


def _seconds(*, positive: bool) -> Callable[[str, str], float]:
    def parse(variable: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(variable, f"{raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(variable, f"{raw!r} is not a finite number")
        if value < 0 or (positive and value == 0):
            raise ConfigError(
                variable, f"{raw!r} must be {'positive' if positive else 'zero or more'}"
            )
        return value

    return parse


def _choice(choices: tuple[str, ...], *, upper: bool) -> Callable[[str, str], str]:
    def parse(variable: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise ConfigError(variable, f"{raw!r} is not one of {', '.join(choices)}")
        return value

    return parse
