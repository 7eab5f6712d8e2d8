"""The API service's settings, read once from the environment at startup."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import attrs

from orchestrator_broker.protocol import DEFAULT_DEAD_LETTER_MAXLEN
from orchestrator_broker.redis_settings import RedisSettings
from orchestrator_telemetry.config import redact_url

from .auth import KeyRing
from .ratelimit import Rate, parse_rate_limits

__all__ = ["ApiSettings", "ConfigError", "parse_api_keys"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
_LOG_FORMATS = frozenset({"plain", "json"})


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


def parse_api_keys(text: str, *, source: str) -> tuple[tuple[str, str], ...]:
    """``tenant:key`` pairs separated by commas or newlines (``#`` starts a comment line).

    The key is everything after the first colon, so keys may contain colons. ``source`` names
    the variable (or file) in error messages; a key itself is never echoed.
    """
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        tenant, sep, key = item.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not key:
            raise ConfigError(f"{source}: entry {number} is not tenant:key")
        if not _TENANT.match(tenant):
            raise ConfigError(
                f"{source}: entry {number}: tenant {tenant!r} must be 1-64 of [A-Za-z0-9_.-]"
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
    - ``MAX_PROMPT_CHARS`` [100000]: longest ``prompt`` (and ``system``) accepted (413 above).
    - ``SHUTDOWN_GRACE_SECONDS`` [10]: on SIGTERM, how long in-flight requests may finish.
    - ``DEAD_LETTER_MAXLEN`` [10000]: dead letters kept per stream (newest first; 0 = all).
    - ``RATE_LIMITS`` [unset]: submissions per tenant and API process, ``*=50/s,acme=200/s``
      (``/s``, ``/m``, ``/h``; ``*`` every other tenant); over it, ``429`` (``ratelimit``).
    - ``LOG_LEVEL`` [INFO]: DEBUG, INFO, WARNING, ERROR or CRITICAL (DEBUG adds access logs).
    - ``LOG_FORMAT`` [plain]: ``plain`` or ``json`` (one JSON object per line, with trace ids).
    """

    port: int = 8080
    host: str = "0.0.0.0"
    app_id: str = "ai-orchestrator_api"
    redis_uri: str | None = attrs.field(default=None, repr=lambda url: repr(_masked_redis(url)))
    jaeger_uri: str | None = attrs.field(default=None, repr=lambda url: repr(_masked_endpoint(url)))
    cache_ttl_minutes: float = 5.0
    stream: str = "tasks"
    results_stream: str = "results"
    api_keys: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    auth_disabled: bool = False
    max_body_bytes: int = 1_048_576
    max_prompt_chars: int = 100_000
    shutdown_grace_seconds: float = 10.0
    dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN
    rate_limits: Mapping[str, Rate] = attrs.field(factory=dict, hash=False)
    log_level: str = "INFO"
    log_format: str = "plain"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Read the variables above; raises ``ConfigError`` naming the first bad one.

        Also refuses a configuration without any API key unless ``AUTH_DISABLED=true``.
        """
        env = os.environ if environ is None else environ
        keys = parse_api_keys(env.get("API_KEYS", ""), source="API_KEYS")
        keys_file = _text(env, "API_KEYS_FILE")
        if keys_file is not None:
            try:
                content = Path(keys_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"API_KEYS_FILE: cannot read {keys_file}: {exc}") from exc
            keys += parse_api_keys(content, source=f"API_KEYS_FILE ({keys_file})")
        settings = cls(
            port=_int(env, "PORT", 8080, low=0, high=65535),
            host=_text(env, "HOST") or "0.0.0.0",
            app_id=_text(env, "APP_ID") or "ai-orchestrator_api",
            redis_uri=_text(env, "REDIS_URI"),
            jaeger_uri=_text(env, "JAEGER_URI"),
            cache_ttl_minutes=_float(env, "CACHE_TTL_MINUTES", 5.0, positive=True),
            stream=_name(env, "REDIS_STREAM_ID", "tasks"),
            results_stream=_name(env, "REDIS_RESULTS_STREAM_ID", "results"),
            api_keys=keys,
            auth_disabled=_bool(env, "AUTH_DISABLED", False),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 1_048_576, low=1024),
            max_prompt_chars=_int(env, "MAX_PROMPT_CHARS", 100_000, low=1),
            shutdown_grace_seconds=_float(env, "SHUTDOWN_GRACE_SECONDS", 10.0),
            dead_letter_maxlen=_int(
                env, "DEAD_LETTER_MAXLEN", DEFAULT_DEAD_LETTER_MAXLEN, low=0, high=10**9
            ),
            rate_limits=_rate_limits(env, "RATE_LIMITS"),
            log_level=_choice(env, "LOG_LEVEL", "INFO", _LOG_LEVELS, upper=True),
            log_format=_choice(env, "LOG_FORMAT", "plain", _LOG_FORMATS),
        )
        if settings.stream == settings.results_stream:
            raise ConfigError("REDIS_RESULTS_STREAM_ID must differ from REDIS_STREAM_ID")
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
                "no API keys: set API_KEYS=tenant:key[,tenant:key...] (or API_KEYS_FILE), "
                "or AUTH_DISABLED=true to run without authentication"
            )
        try:
            return KeyRing.from_pairs(self.api_keys)
        except ValueError as exc:
            raise ConfigError(f"API_KEYS: {exc}") from exc


def _rate_limits(env: Mapping[str, str], name: str) -> dict[str, Rate]:
    raw = _text(env, name)
    if raw is None:
        return {}
    try:
        return parse_rate_limits(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    value = _text(env, name) or default
    if any(ch.isspace() for ch in value):
        raise ConfigError(f"{name} must not contain whitespace, got {value!r}")
    return value


def _int(
    env: Mapping[str, str], name: str, default: int, *, low: int, high: int | None = None
) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"{name} must be {bounds}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {raw!r}")
    if positive and value == 0:
        raise ConfigError(f"{name} must be greater than 0")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(
    env: Mapping[str, str], name: str, default: str, allowed: frozenset[str], *, upper: bool = False
) -> str:
    raw = _text(env, name)
    if raw is None:
        return default
    value = raw.upper() if upper else raw.lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(sorted(allowed))}, got {raw!r}")
    return value
