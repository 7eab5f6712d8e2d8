"""Telemetry settings, read from environment variables into one frozen attrs class.

Where spans go (first match wins; the standard OpenTelemetry variables beat the seed's one):

1. ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``: no spans at all.
2. ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: the full OTLP/HTTP traces URL, used as given.
3. ``OTEL_EXPORTER_OTLP_ENDPOINT``: a base URL; ``/v1/traces`` is appended (as the SDK does).
4. ``JAEGER_URI``: the collector's OTLP/HTTP address, ``host:port`` or a URL
   (``http://jaeger:4318``); becomes ``http://host:port/v1/traces``. ``/v1/traces`` is
   appended unless the path already ends with it; the port defaults to 4318.
5. Nothing set: tracing is *off quietly*. Spans and trace ids still exist (so responses can
   name their trace and context still crosses the broker), but nothing is exported and nothing
   is logged about it.

The service name is ``OTEL_SERVICE_NAME``, else ``APP_ID``, else ``service.name`` from
``OTEL_RESOURCE_ATTRIBUTES``, else the caller's default. Every other
``OTEL_RESOURCE_ATTRIBUTES`` entry (``deployment.environment.name=prod``, ...) is kept.

Also read: ``OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`` (``k=v,k2=v2``; never logged),
``OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`` (seconds, as the Python exporter reads it),
``OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION`` (``none``/``gzip``/``deflate``),
``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``. The signal-specific variable wins
over the generic one. A malformed value raises ``TelemetryConfigError`` (an
``orchestrator_settings.ConfigError``) naming the variable, even in a variable another one
overrides (a typo is worth failing on either way).
TLS certificate variables and ``OTEL_BSP_*`` are read by the SDK itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import attrs

from orchestrator_settings import Env

from .errors import TelemetryConfigError

Compression = Literal["none", "gzip", "deflate"]
_COMPRESSIONS: tuple[Compression, ...] = ("none", "gzip", "deflate")

#: Samplers ``OTEL_TRACES_SAMPLER`` may name (those the SDK implements without extra packages).
SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)

_OTLP_HTTP_PORT = 4318
_TRACES_PATH = "/v1/traces"


def package_version() -> str:
    """This distribution's version (the default ``service.version``)."""
    try:
        return importlib.metadata.version("ai-orchestration")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a copy
        return "0.0.0"


def _default_instance_id() -> str:
    # hostname-pid, like the broker's consumer names, so a span and a consumer match up.
    return f"{socket.gethostname()}-{os.getpid()}"


def _env(environ: Mapping[str, str]) -> Env:
    return Env(environ, error=TelemetryConfigError)


def _check_url(variable: str, value: str) -> str:
    return _env({}).check_url(variable, value)


def _append_traces_path(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith(_TRACES_PATH):
        path += _TRACES_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def jaeger_uri_endpoint(value: str) -> str:
    """The OTLP/HTTP traces URL that ``JAEGER_URI`` (``host:port`` or a URL) means."""
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    _check_url("JAEGER_URI", text)
    parts = urlsplit(text)
    if parts.port is None:
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@{host}:{_OTLP_HTTP_PORT}" if auth else f"{host}:{_OTLP_HTTP_PORT}"
        text = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return _append_traces_path(text)


def _resolve_endpoint(env: Env) -> tuple[str, str] | None:
    """(traces URL, the variable it came from), by the precedence in the module docstring.

    Every variable that is set is checked, the overridden ones too: a malformed value is a
    mistake worth failing on even when another variable wins.
    """
    candidates: list[tuple[str, str]] = []
    if (url := env.url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)) is not None:
        candidates.append((url, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if (base := env.url("OTEL_EXPORTER_OTLP_ENDPOINT", None)) is not None:
        candidates.append((f"{base.rstrip('/')}{_TRACES_PATH}", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    if (value := env.raw("JAEGER_URI")) is not None:
        candidates.append((jaeger_uri_endpoint(value), "JAEGER_URI"))
    return candidates[0] if candidates else None


def _parse_exporter(env: Env) -> bool:
    """Whether ``OTEL_TRACES_EXPORTER`` allows exporting (``otlp``, the default, or ``none``)."""
    names = env.items("OTEL_TRACES_EXPORTER", None, choices=("otlp", "none"), case="lower")
    return names is None or "otlp" in names


def _parse_sampler(env: Env) -> tuple[str, float | None]:
    name = env.choice(
        "OTEL_TRACES_SAMPLER", "parentbased_always_on", sorted(SAMPLERS), case="lower"
    )
    if not name.endswith("traceidratio"):
        return name, None
    return name, env.number("OTEL_TRACES_SAMPLER_ARG", 1.0, low=0.0, high=1.0)


def _parse_timeout(env: Env) -> float:
    name = env.first("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    if name is None:
        return 10.0
    # Infinity is allowed: the Python exporter reads this variable as a plain float too.
    return env.number(name, 10.0, positive=True, finite=False)


def _parse_compression(env: Env) -> Compression:
    name = env.first("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
    if name is None:
        return "none"
    return env.choice(name, "none", _COMPRESSIONS, case="lower")


def redact_url(url: str) -> str:
    """``url`` without userinfo (credentials) or query string, fit for a log line."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _frozen_dict(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen
class TelemetrySettings:
    """What ``setup_telemetry`` needs: identity of the service and where spans go.

    ``traces_endpoint`` is the full OTLP/HTTP URL (``.../v1/traces``) or None for "do not
    export"; ``endpoint_source`` names the variable it came from (or why it is off).
    ``headers`` may hold credentials: they stay out of ``repr`` and ``endpoint_for_log``.
    """

    service_name: str
    service_version: str = attrs.field(factory=package_version)
    instance_id: str = attrs.field(factory=_default_instance_id)
    resource_attributes: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict)
    traces_endpoint: str | None = None
    endpoint_source: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict, repr=False)
    timeout: float = 10.0
    compression: Compression = "none"
    sampler: str = attrs.field(default="parentbased_always_on")
    sampler_arg: float | None = None
    disabled: bool = False

    @sampler.validator
    def _check_sampler(self, _: attrs.Attribute[str], value: str) -> None:
        if value not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, default_service_name: str = "ai-orchestrator"
    ) -> TelemetrySettings:
        """Read the variables listed in this module's docstring from ``environ``."""
        env = _env(environ)
        resource = env.mapping(
            "OTEL_RESOURCE_ATTRIBUTES",
            str,
            entry="of the form key=value",
            unique=False,
            secret=True,
            percent_encoded=True,
        )
        service_name = (
            env.raw("OTEL_SERVICE_NAME")
            or env.raw("APP_ID")
            or resource.pop("service.name", None)
            or default_service_name
        )
        resource.pop("service.name", None)
        version = resource.pop("service.version", None) or package_version()
        instance_id = resource.pop("service.instance.id", None) or _default_instance_id()

        disabled = env.boolean("OTEL_SDK_DISABLED", False, true=("true",), false=("false",))
        exporting = _parse_exporter(env)
        resolved = _resolve_endpoint(env)  # validated even when unused: fail early
        endpoint, source = resolved if resolved else (None, None)
        if disabled:
            endpoint, source = None, "OTEL_SDK_DISABLED=true"
        elif not exporting:
            endpoint, source = None, "OTEL_TRACES_EXPORTER=none"

        headers_from = env.first("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
        headers: dict[str, str] = {}
        if headers_from is not None:
            # Header values may be credentials: errors name the entry's position only.
            headers = env.mapping(
                headers_from,
                str,
                entry="of the form key=value",
                unique=False,
                secret=True,
                percent_encoded=True,
            )
        sampler, sampler_arg = _parse_sampler(env)
        return cls(
            service_name=service_name,
            service_version=version,
            instance_id=instance_id,
            resource_attributes=resource,
            traces_endpoint=endpoint,
            endpoint_source=source,
            headers=headers,
            timeout=_parse_timeout(env),
            compression=_parse_compression(env),
            sampler=sampler,
            sampler_arg=sampler_arg,
            disabled=disabled,
        )

    @property
    def exporting(self) -> bool:
        """Whether spans are sent anywhere."""
        return self.traces_endpoint is not None and not self.disabled

    @property
    def endpoint_for_log(self) -> str:
        """Where spans go, for a startup log line: no credentials, headers or query string."""
        if self.disabled:
            return "off (OTEL_SDK_DISABLED=true)"
        if self.traces_endpoint is None:
            return f"off ({self.endpoint_source or 'no OTLP endpoint configured'})"
        return f"{redact_url(self.traces_endpoint)} (from {self.endpoint_source})"
