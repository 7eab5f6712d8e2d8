"""Where the Redis broker connects, parsed from one URI, with the password kept out of sight.

Accepted forms: ``host:port`` (the seed's ``REDIS_HOST`` style), ``redis://[user:pass@]host
[:port][/db]`` and ``rediss://...`` (TLS). The password is never part of ``repr()``/``str()``;
log ``masked_url`` instead.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

from .errors import ConfigError

_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d+)$")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class RedisSettings:
    """Connection and pool settings for ``RedisStreamsBroker``.

    ``socket_timeout`` bounds every ordinary command (so a hung server fails a publish in
    seconds, not minutes); blocking reads use their own pool with ``read_timeout``, and
    ``ConsumeOptions.block`` must stay below it. ``max_connections`` sizes the blocking
    pool: a caller past it waits up to ``pool_timeout`` instead of failing at once.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False
    connect_timeout: float = attrs.field(default=1.0, validator=_positive)
    socket_timeout: float = attrs.field(default=5.0, validator=_positive)
    read_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_connections: int = attrs.field(default=32, validator=_positive)
    pool_timeout: float = attrs.field(default=2.0, validator=_positive)

    @classmethod
    def from_uri(cls, uri: str, **overrides: Any) -> RedisSettings:
        """Parse ``host:port``, ``redis://`` or ``rediss://``; raises ``ConfigError``.

        ``overrides`` set the pool and timeout fields (``max_connections=64``...).
        """
        uri = uri.strip()
        if not uri:
            raise ConfigError("Redis URI is empty")
        if "://" not in uri:
            match = _HOST_PORT.match(uri)
            if match is None:
                raise ConfigError(f"Redis address {uri!r} is neither host:port nor a redis:// URL")
            return cls(host=match["host"].strip("[]"), port=_port(match["port"]), **overrides)
        parts = urlsplit(uri)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(f"Redis URL scheme must be redis or rediss, got {parts.scheme!r}")
        if parts.query or parts.fragment:
            raise ConfigError("Redis URL must not have query parameters or a fragment")
        try:
            hostname, raw_port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigError(f"Redis URL has an invalid port: {exc}") from None
        if not hostname:
            raise ConfigError("Redis URL has no host")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigError(f"Redis URL database must be a number, got {path!r}")
        return cls(
            host=hostname,
            port=raw_port if raw_port is not None else 6379,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=parts.scheme == "rediss",
            **overrides,
        )

    @property
    def masked_url(self) -> str:
        """The URL with the password replaced by ``***``, for log lines."""
        auth = ""
        if self.username or self.password is not None:
            auth = f"{self.username or ''}{':***' if self.password is not None else ''}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        return self.masked_url


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(f"Redis port must be 1-65535, got {port}")
    return port
