"""The worker's settings, read once at startup from environment variables."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import attrs

from orchestrator_broker import DEFAULT_DEAD_LETTER_MAXLEN, Fairness
from orchestrator_broker.redis_settings import RedisSettings
from orchestrator_settings import Env
from orchestrator_tasks import RESULTS_STREAM, TASKS_GROUP, TASKS_STREAM
from orchestrator_telemetry import TelemetrySettings
from orchestrator_telemetry.logs import LogFormat
from orchestrator_telemetry.metrics import MAX_LABEL_VALUES

from .errors import ConfigError
from .limits import parse_concurrency
from .pricing import Price, load_prices_file, parse_prices
from .providers.settings import ProviderSettings
from .retry import RetryPolicy
from .routing import parse_aliases
from .tenancy import parse_caps, parse_weights

_NAME = re.compile(r"[A-Za-z0-9_.:\-]+")
_NAME_EXPECTED = "may only hold letters, digits and _ . : -"
_HOST = re.compile(r"[^\s/@]+")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_HOST_EXPECTED = "is not a host name or address"
_LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "json")
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
    ``TASK_DEADLINE_SECONDS``    ``3 x TASK_TIMEOUT``      a task not done this long after its
                                                           submission (queue wait, attempts,
                                                           backoff and waiting out a paused
                                                           provider together) fails with
                                                           ``deadline_exceeded``, dead-lettered;
                                                           calls are cut short at it
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
    ``ECHO_ENABLED``             ``true``                  ``false`` leaves the ``echo`` provider
                                                           out of this worker (``run`` keeps it)
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
    ``METRICS_MAX_LABEL_VALUES`` ``100``                   distinct model names a metric label
                                                           keeps; later new ones are ``other``
    ``PRESENCE_TTL_SECONDS``     ``15``                    the worker's advert (what it serves,
                                                           for the API) is renewed every third
                                                           of this; a dead worker drops out of
                                                           ``GET /v1/models`` after this long
    ``TENANT_WEIGHTS``           ``*=1``                   ``*=1,acme=3``: free slots go to the
                                                           tenants with waiting tasks in these
                                                           proportions (weighted round robin)
    ``TENANT_CONCURRENCY``       (no caps)                 ``*=20,acme=50``: tasks of a tenant
                                                           running at once across all workers
                                                           of the stream (leased: a crashed
                                                           worker's share returns within
                                                           LEASE_SECONDS); the same on every
                                                           worker, as are the weights
    ``PRIORITY_AGING_SECONDS``   ``60``                    a ``low`` task waiting this long
                                                           competes as ``normal``
    ============================ ========================= =======================================

    The ``OTEL_*`` variables (sampler, headers, ``OTEL_SDK_DISABLED``...) are read by
    ``orchestrator_telemetry.TelemetrySettings`` into ``telemetry``; the provider variables
    (``OPENAI_API_KEY``, ``GEMINI_API_KEY``, base URLs, timeouts) by
    ``providers.ProviderSettings`` into ``providers``.

    A malformed value raises ``ConfigError`` (``orchestrator_settings``'; for the trace
    settings its subclass ``TelemetryConfigError``) naming the variable.
    """

    app_id: str = "ai-orchestrator_worker"
    redis_uri: str = attrs.field(default="redis://localhost:6379/0", repr=False)
    jaeger_uri: str | None = None
    stream: str = TASKS_STREAM
    results_stream: str = RESULTS_STREAM
    consumer_group: str = TASKS_GROUP
    consumer_name: str | None = None
    concurrency: int = 5
    default_model: str = "echo"
    task_timeout: float = 300.0
    task_deadline: float | None = None  # None: TASK_DEADLINE_SECONDS unset, 3 x task_timeout
    lease_seconds: float = 30.0
    max_attempts: int = 5
    max_deliveries: int = 6
    dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN
    retry_base: float = 1.0
    retry_max: float = 60.0
    model_aliases: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)
    provider_concurrency: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    breaker_failures: int = 5
    echo_enabled: bool = True
    breaker_cooldown: float = 30.0
    model_prices: Mapping[str, Price] = attrs.field(factory=dict, hash=False, repr=False)
    shutdown_grace: float = 25.0
    delta_flush_ms: float = 100.0
    log_level: str = "INFO"
    log_format: LogFormat = "plain"
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: METRICS_PORT unset, DEFAULT_METRICS_PORT
    metrics_max_label_values: int = MAX_LABEL_VALUES
    presence_ttl: float = 15.0
    tenant_weights: Mapping[str, float] = attrs.field(factory=dict, hash=False)
    tenant_concurrency: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    priority_aging: float = 60.0
    telemetry: TelemetrySettings | None = attrs.field(default=None, repr=False)
    providers: ProviderSettings | None = attrs.field(default=None, repr=False)

    @property
    def deadline_seconds(self) -> float:
        """``TASK_DEADLINE_SECONDS``, by default three times ``TASK_TIMEOUT_SECONDS``."""
        return self.task_deadline if self.task_deadline is not None else 3 * self.task_timeout

    @property
    def delta_flush_interval(self) -> float:
        """``DELTA_FLUSH_MS`` in seconds."""
        return self.delta_flush_ms / 1000.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerSettings:
        """Read the variables above from ``environ``; missing or empty ones take defaults."""
        env = Env(environ)
        d = cls()

        def name(variable: str, default: str) -> str:
            return env.text(variable, default, pattern=_NAME, expected=_NAME_EXPECTED)

        values: dict[str, Any] = {
            "app_id": name("APP_ID", d.app_id),
            "redis_uri": env.parsed("REDIS_URI", _redis_uri, d.redis_uri),
            "jaeger_uri": env.text("JAEGER_URI", d.jaeger_uri),
            "stream": name("REDIS_STREAM_ID", d.stream),
            "results_stream": name("REDIS_RESULTS_STREAM_ID", d.results_stream),
            "consumer_group": name("CONSUMER_GROUP", d.consumer_group),
            "consumer_name": env.text(
                "CONSUMER_NAME", d.consumer_name, pattern=_NAME, expected=_NAME_EXPECTED
            ),
            "concurrency": env.integer("NUMBER_OF_WORKERS", d.concurrency, low=1, high=100_000),
            "default_model": env.text("DEFAULT_MODEL", d.default_model),
            "task_timeout": env.seconds("TASK_TIMEOUT_SECONDS", d.task_timeout, positive=True),
            "task_deadline": env.seconds("TASK_DEADLINE_SECONDS", None, positive=True),
            "lease_seconds": env.seconds("LEASE_SECONDS", d.lease_seconds, positive=True),
            # None when unset: _check_attempts derives one from the other.
            "max_attempts": env.integer("MAX_ATTEMPTS", None, low=1, high=999),
            "max_deliveries": env.integer("MAX_DELIVERIES", None, low=2, high=1_000),
            "dead_letter_maxlen": env.integer(
                "DEAD_LETTER_MAXLEN", d.dead_letter_maxlen, low=0, high=10**9
            ),
            "retry_base": env.seconds("RETRY_BASE_SECONDS", d.retry_base),
            "retry_max": env.seconds("RETRY_MAX_SECONDS", d.retry_max),
            "model_aliases": env.parsed("MODEL_ALIASES", parse_aliases, d.model_aliases),
            "provider_concurrency": env.parsed(
                "PROVIDER_CONCURRENCY", parse_concurrency, d.provider_concurrency
            ),
            "echo_enabled": env.boolean("ECHO_ENABLED", d.echo_enabled),
            "breaker_failures": env.integer(
                "BREAKER_FAILURES", d.breaker_failures, low=0, high=1_000_000
            ),
            "breaker_cooldown": env.seconds(
                "BREAKER_COOLDOWN_SECONDS", d.breaker_cooldown, positive=True
            ),
            "shutdown_grace": env.seconds("SHUTDOWN_GRACE_SECONDS", d.shutdown_grace),
            "delta_flush_ms": env.seconds("DELTA_FLUSH_MS", d.delta_flush_ms),
            "log_level": env.choice("LOG_LEVEL", d.log_level, _LOG_LEVELS, case="upper"),
            "log_format": env.choice("LOG_FORMAT", d.log_format, _LOG_FORMATS, case="lower"),
            "metrics_host": env.text(
                "METRICS_HOST", d.metrics_host, pattern=_HOST, expected=_HOST_EXPECTED
            ),
            "metrics_port": env.integer("METRICS_PORT", d.metrics_port, low=0, high=65_535),
            "metrics_max_label_values": env.integer(
                "METRICS_MAX_LABEL_VALUES", d.metrics_max_label_values, low=1, high=100_000
            ),
            "presence_ttl": env.seconds("PRESENCE_TTL_SECONDS", d.presence_ttl, positive=True),
            "tenant_weights": env.parsed("TENANT_WEIGHTS", parse_weights, d.tenant_weights),
            "tenant_concurrency": env.parsed(
                "TENANT_CONCURRENCY", parse_caps, d.tenant_concurrency
            ),
            "priority_aging": env.seconds(
                "PRIORITY_AGING_SECONDS", d.priority_aging, positive=True
            ),
        }
        prices: dict[str, Price] = env.parsed("MODEL_PRICES_FILE", load_prices_file, {})
        prices.update(env.parsed("MODEL_PRICES", parse_prices, {}))
        values["model_prices"] = prices
        _check_attempts(values, d)
        values["providers"] = ProviderSettings.from_env(environ)
        values["telemetry"] = TelemetrySettings.from_env(
            environ, default_service_name=values["app_id"]
        )
        settings = attrs.evolve(d, **values)
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
    def fairness(self) -> Fairness:
        """``TENANT_WEIGHTS``, ``TENANT_CONCURRENCY`` and ``PRIORITY_AGING_SECONDS`` for the
        broker."""
        return Fairness(
            weights=self.tenant_weights, caps=self.tenant_concurrency, aging=self.priority_aging
        )

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
    attempts: int | None = values["max_attempts"]
    deliveries: int | None = values["max_deliveries"]
    if attempts is None and deliveries is None:
        values["max_attempts"] = defaults.max_attempts
        values["max_deliveries"] = defaults.max_deliveries
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


def _redis_uri(_: str, raw: str) -> str:
    RedisSettings.from_uri(raw)  # a ValueError (the broker's ConfigError) names the problem
    return raw
