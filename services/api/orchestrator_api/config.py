"""The API service's settings, read once from the environment at startup."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import attrs

from orchestrator_broker.protocol import DEFAULT_DEAD_LETTER_MAXLEN
from orchestrator_broker.redis_settings import RedisSettings
from orchestrator_settings import ConfigError, Env
from orchestrator_tasks import RESULTS_STREAM, TASKS_STREAM
from orchestrator_telemetry.config import redact_url
from orchestrator_telemetry.metrics import MAX_LABEL_VALUES

from .auth import KeyRing
from .ratelimit import Rate, parse_rate_limits

__all__ = ["ApiSettings", "ConfigError", "parse_api_keys"]

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NO_SPACE = re.compile(r"\S+")
_LOG_LEVELS = ("CRITICAL", "DEBUG", "ERROR", "INFO", "WARNING")
_LOG_FORMATS = ("json", "plain")


def parse_api_keys(text: str, *, source: str, origin: str = "") -> tuple[tuple[str, str], ...]:
    """``tenant:key`` pairs separated by commas or newlines (``#`` starts a comment line).

    The key is everything after the first colon, so keys may contain colons. ``source`` names
    the variable in error messages (``origin``, if given, the file it points to); a key
    itself is never echoed.
    """
    where = f"{origin}: " if origin else ""
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        tenant, sep, key = item.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not key:
            raise ConfigError(source, f"{where}entry {number} is not tenant:key")
        if not _TENANT.match(tenant):
            raise ConfigError(
                source, f"{where}entry {number}: tenant {tenant!r} must be 1-64 of [A-Za-z0-9_.-]"
            )
        pairs.append((tenant, key))
    return tuple(pairs)


def _masked_redis(url: str | None) -> str | None:
    """A Redis URL (or bare ``host:port``) with its password as ``***``, for logs."""
    if url is None:
        return None
    try:
        return RedisSettings.from_uri(url).masked_url
    except ValueError:
        return "<unparseable REDIS_URI>"


def _masked_endpoint(url: str | None) -> str | None:
    return None if url is None else redact_url(url)


@attrs.frozen
class ApiSettings:
    """Settings of the API service, from environment variables (``ApiSettings.from_env``).

    Variables (default in brackets):

    - ``PORT`` [8080]: TCP port the HTTP API listens on.
    - ``HOST`` [0.0.0.0]: address to bind (single-process mode binds 127.0.0.1).
    - ``APP_ID`` [ai-orchestrator_api]: service name in traces and logs.
    - ``REDIS_URI`` [unset]: Redis for the broker and the task store, as ``redis://[:password@]
      host:port[/db]`` or the original's bare ``host:port``; unset = in-memory broker and store
      (one process only, nothing survives a restart).
    - ``JAEGER_URI`` [unset]: where traces go (OTLP/HTTP endpoint of a collector); unset =
      tracing ids are still made and returned, nothing is exported.
    - ``CACHE_TTL_MINUTES`` [5]: how long a finished task (record, result, events) is kept,
      and how long a tenant's identical submission (same model, system, prompt and
      parameters) is answered from the prompt cache after a success (``"cache": false`` in a
      submission opts out).
    - ``REDIS_STREAM_ID`` [tasks]: stream the API publishes tasks on.
    - ``REDIS_RESULTS_STREAM_ID`` [results]: stream the API reads worker results from.
    - ``API_KEYS`` [unset]: ``tenant:key`` pairs, comma-separated; clients send
      ``Authorization: Bearer <key>`` and see only their tenant's tasks.
    - ``API_KEYS_FILE`` [unset]: file with one ``tenant:key`` per line (``#`` comments), added
      to ``API_KEYS``. Without any key the service refuses to start unless auth is disabled.
    - ``AUTH_DISABLED`` [false]: ``true`` accepts every request as tenant ``default``.
    - ``MAX_BODY_BYTES`` [1048576]: largest request body accepted (413 above).
    - ``MAX_PROMPT_CHARS`` [100000]: longest conversation accepted, every message's content
      together (the ``prompt``/``system`` shorthand counts the same); 413 above.
    - ``SHUTDOWN_GRACE_SECONDS`` [10]: on SIGTERM, how long in-flight requests may finish.
    - ``DEAD_LETTER_MAXLEN`` [10000]: dead letters kept per stream (newest first; 0 = all).
    - ``RATE_LIMITS`` [unset]: submissions per tenant and API process, ``*=50/s,acme=200/s``
      (``/s``, ``/m``, ``/h``; ``*`` every other tenant); over it, ``429`` (``ratelimit``).
    - ``METRICS_MAX_LABEL_VALUES`` [100]: distinct values a metric label keeps when clients
      choose them (model names); later new ones count as ``other``.
    - ``HTTP_HEADER_TIMEOUT_SECONDS`` [10]: a connection that has not sent its complete
      request headers this long after opening (or after the first byte of a later
      keep-alive request) is closed.
    - ``HTTP_KEEPALIVE_SECONDS`` [75]: an idle keep-alive connection is closed after this.
    - ``HTTP_MAX_CONNECTIONS`` [10000]: open connections per API process; past it a new
      connection gets ``503`` (``Retry-After: 1``) at once and is closed.
    - ``MAX_BATCH_FILE_BYTES`` [104857600]: largest file ``POST /v1/files`` takes (413 above).
    - ``BATCH_FILE_TTL_HOURS`` [720]: how long an uploaded file, a batch's output and error
      files, and a finished batch are kept.
    - ``LOG_LEVEL`` [INFO]: DEBUG, INFO, WARNING, ERROR or CRITICAL (DEBUG adds access logs).
    - ``LOG_FORMAT`` [plain]: ``plain`` or ``json`` (one JSON object per line, with trace ids).
    - ``ADMIN_TENANTS`` [unset]: comma-separated tenants that may use the operator endpoints
      (``/v1/admin/...``: queues, dead letters) and the console's operator views.
    - ``CONSOLE_TRACE_URL`` [unset]: the console's link to a task's trace, an http(s) URL
      template holding ``{trace_id}`` (e.g. Grafana Explore on Tempo); unset = no link.
    """

    port: int = 8080
    host: str = "0.0.0.0"
    app_id: str = "ai-orchestrator_api"
    redis_uri: str | None = attrs.field(default=None, repr=lambda url: repr(_masked_redis(url)))
    jaeger_uri: str | None = attrs.field(default=None, repr=lambda url: repr(_masked_endpoint(url)))
    cache_ttl_minutes: float = 5.0
    stream: str = TASKS_STREAM
    results_stream: str = RESULTS_STREAM
    api_keys: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    auth_disabled: bool = False
    max_body_bytes: int = 1_048_576
    max_prompt_chars: int = 100_000
    shutdown_grace_seconds: float = 10.0
    dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN
    rate_limits: Mapping[str, Rate] = attrs.field(factory=dict, hash=False)
    metrics_max_label_values: int = MAX_LABEL_VALUES
    http_header_timeout_seconds: float = 10.0
    http_keepalive_seconds: float = 75.0
    http_max_connections: int = 10_000
    max_batch_file_bytes: int = 104_857_600
    batch_file_ttl_hours: float = 720.0
    log_level: str = "INFO"
    log_format: str = "plain"
    admin_tenants: frozenset[str] = frozenset()
    console_trace_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Read the variables above; raises ``ConfigError`` naming the first bad one.

        Also refuses a configuration without any API key unless ``AUTH_DISABLED=true``.
        """
        env = Env(os.environ if environ is None else environ)
        keys = parse_api_keys(env.raw("API_KEYS") or "", source="API_KEYS")
        keys_file = env.raw("API_KEYS_FILE")
        if keys_file is not None:
            try:
                content = Path(keys_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError("API_KEYS_FILE", f"cannot read {keys_file}: {exc}") from exc
            keys += parse_api_keys(content, source="API_KEYS_FILE", origin=keys_file)
        settings = cls(
            port=env.integer("PORT", 8080, low=0, high=65535),
            host=env.text("HOST", "0.0.0.0"),
            app_id=env.text("APP_ID", "ai-orchestrator_api"),
            redis_uri=env.text("REDIS_URI", None),
            jaeger_uri=env.text("JAEGER_URI", None),
            cache_ttl_minutes=env.number("CACHE_TTL_MINUTES", 5.0, low=0.0, positive=True),
            stream=_name(env, "REDIS_STREAM_ID", TASKS_STREAM),
            results_stream=_name(env, "REDIS_RESULTS_STREAM_ID", RESULTS_STREAM),
            api_keys=keys,
            auth_disabled=env.boolean("AUTH_DISABLED", False),
            max_body_bytes=env.integer("MAX_BODY_BYTES", 1_048_576, low=1024),
            max_prompt_chars=env.integer("MAX_PROMPT_CHARS", 100_000, low=1),
            shutdown_grace_seconds=env.seconds("SHUTDOWN_GRACE_SECONDS", 10.0),
            dead_letter_maxlen=env.integer(
                "DEAD_LETTER_MAXLEN", DEFAULT_DEAD_LETTER_MAXLEN, low=0, high=10**9
            ),
            rate_limits=env.parsed("RATE_LIMITS", _rate_limits, {}),
            metrics_max_label_values=env.integer(
                "METRICS_MAX_LABEL_VALUES", MAX_LABEL_VALUES, low=1, high=100_000
            ),
            http_header_timeout_seconds=env.seconds(
                "HTTP_HEADER_TIMEOUT_SECONDS", 10.0, positive=True
            ),
            http_keepalive_seconds=env.seconds("HTTP_KEEPALIVE_SECONDS", 75.0, positive=True),
            http_max_connections=env.integer("HTTP_MAX_CONNECTIONS", 10_000, low=1, high=10**7),
            max_batch_file_bytes=env.integer(
                "MAX_BATCH_FILE_BYTES", 104_857_600, low=1024, high=2**40
            ),
            batch_file_ttl_hours=env.number("BATCH_FILE_TTL_HOURS", 720.0, low=0.0, positive=True),
            log_level=env.choice("LOG_LEVEL", "INFO", _LOG_LEVELS, case="upper"),
            log_format=env.choice("LOG_FORMAT", "plain", _LOG_FORMATS, case="lower"),
            admin_tenants=frozenset(env.parsed("ADMIN_TENANTS", _tenants, ())),
            console_trace_url=_trace_url(env),
        )
        if settings.stream == settings.results_stream:
            raise ConfigError("REDIS_RESULTS_STREAM_ID", "must differ from REDIS_STREAM_ID")
        settings.keyring()  # refuse to start without keys unless auth is explicitly off
        return settings

    @property
    def redis_url(self) -> str | None:
        """``REDIS_URI`` as a URL (a bare ``host:port`` gets ``redis://``)."""
        if self.redis_uri is None:
            return None
        return self.redis_uri if "://" in self.redis_uri else f"redis://{self.redis_uri}"

    @property
    def masked_redis_url(self) -> str | None:
        """``redis_url`` with the password hidden, for logs."""
        return _masked_redis(self.redis_url)

    @property
    def cache_ttl_seconds(self) -> float:
        return self.cache_ttl_minutes * 60.0

    def keyring(self) -> KeyRing:
        """The API keys as a lookup table; ``ConfigError`` if there are none and auth is on."""
        if self.auth_disabled:
            return KeyRing.disabled()
        if not self.api_keys:
            raise ConfigError(
                "API_KEYS",
                "no API keys: set API_KEYS=tenant:key[,tenant:key...] (or API_KEYS_FILE), "
                "or AUTH_DISABLED=true to run without authentication",
            )
        try:
            return KeyRing.from_pairs(self.api_keys)
        except ValueError as exc:
            raise ConfigError("API_KEYS", str(exc)) from exc


def _rate_limits(_: str, raw: str) -> dict[str, Rate]:
    return parse_rate_limits(raw)  # its ValueError becomes a ConfigError naming RATE_LIMITS


def _tenants(name: str, raw: str) -> tuple[str, ...]:
    tenants = tuple(part.strip() for part in raw.split(",") if part.strip())
    for tenant in tenants:
        if not _TENANT.match(tenant):
            raise ConfigError(name, f"tenant {tenant!r} must be 1-64 of [A-Za-z0-9_.-]")
    return tenants


def _trace_url(env: Env) -> str | None:
    url = env.url("CONSOLE_TRACE_URL", None, credentials=False)
    if url is not None and "{trace_id}" not in url:
        raise ConfigError("CONSOLE_TRACE_URL", "must hold {trace_id} where the trace id goes")
    return url


def _name(env: Env, name: str, default: str) -> str:
    return env.text(name, default, pattern=_NO_SPACE, expected="must not contain whitespace")
