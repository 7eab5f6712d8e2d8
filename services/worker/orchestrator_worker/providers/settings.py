"""Provider settings, read from the worker's environment only: a task can never choose a base
URL or an API key.

============================= ============================================= ==================
Variable                      Default                                       Meaning
============================= ============================================= ==================
``OPENAI_BASE_URL``           ``https://api.openai.com/v1``                 any OpenAI-compatible
                                                                            API: Ollama
                                                                            (``http://localhost:
                                                                            11434/v1``), vLLM,
                                                                            llama.cpp's server
``OPENAI_API_KEY``            (unset: no ``Authorization`` header)          bearer token
``GEMINI_BASE_URL``           ``https://generativelanguage.googleapis.com/  Google's Generative
                              v1beta``                                      Language API
``GEMINI_API_KEY``            (unset: gemini tasks fail ``authentication``) sent as
                                                                            ``x-goog-api-key``
``PROVIDER_CONNECT_TIMEOUT``  ``10``                                        seconds to open a
                                                                            connection
``PROVIDER_READ_TIMEOUT``     ``120``                                       longest silence
                                                                            while waiting for
                                                                            the next bytes
``PROVIDER_MAX_CONNECTIONS``  ``0`` (no limit beyond ``NUMBER_OF_WORKERS``) open connections
                                                                            per provider
``TRACE_CONTENT``             ``false``                                     put prompts and
                                                                            answers on spans
============================= ============================================= ==================

The whole call is bounded by the worker's ``TASK_TIMEOUT_SECONDS``. API keys are held in
``Secret`` and kept out of every ``repr``; base URLs may not carry credentials or a query.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TypeVar

import attrs
import yarl

from ..errors import ConfigError

__all__ = ["GeminiSettings", "HttpSettings", "OpenAISettings", "ProviderSettings", "Secret"]

_T = TypeVar("_T")

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
GEMINI_DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"


class Secret:
    """A secret string that does not show itself: ``repr``/``str`` give ``'***'``.

    ``reveal()`` is the only way to the value; call it where the value goes on the wire.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@attrs.frozen
class HttpSettings:
    """How provider HTTP calls behave, shared by every provider."""

    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_connections: int = 0
    trace_content: bool = False


@attrs.frozen
class OpenAISettings:
    """Where ``openai/<model>`` goes: any OpenAI-compatible Chat Completions API."""

    base_url: str = OPENAI_DEFAULT_BASE_URL
    api_key: Secret | None = attrs.field(default=None, repr=False)
    http: HttpSettings = HttpSettings()


@attrs.frozen
class GeminiSettings:
    """Where ``gemini/<model>`` goes: Google's Generative Language API."""

    base_url: str = GEMINI_DEFAULT_BASE_URL
    api_key: Secret | None = attrs.field(default=None, repr=False)
    http: HttpSettings = HttpSettings()


@attrs.frozen
class ProviderSettings:
    """All provider settings of a worker process; see the module docstring."""

    openai: OpenAISettings = OpenAISettings()
    gemini: GeminiSettings = GeminiSettings()
    http: HttpSettings = HttpSettings()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProviderSettings:
        """Read the variables above; missing or empty ones take defaults.

        Raises ``ConfigError`` naming the variable for a malformed value.
        """

        def read(variable: str, parse: Callable[[str, str], _T], default: _T) -> _T:
            raw = environ.get(variable, "").strip()
            return parse(variable, raw) if raw else default

        defaults = HttpSettings()
        http = HttpSettings(
            connect_timeout=read(
                "PROVIDER_CONNECT_TIMEOUT", _positive_seconds, defaults.connect_timeout
            ),
            read_timeout=read("PROVIDER_READ_TIMEOUT", _positive_seconds, defaults.read_timeout),
            max_connections=read(
                "PROVIDER_MAX_CONNECTIONS", _connections, defaults.max_connections
            ),
            trace_content=read("TRACE_CONTENT", _boolean, defaults.trace_content),
        )
        return cls(
            openai=OpenAISettings(
                base_url=read("OPENAI_BASE_URL", _base_url, OPENAI_DEFAULT_BASE_URL),
                api_key=read("OPENAI_API_KEY", _secret, None),
                http=http,
            ),
            gemini=GeminiSettings(
                base_url=read("GEMINI_BASE_URL", _base_url, GEMINI_DEFAULT_BASE_URL),
                api_key=read("GEMINI_API_KEY", _secret, None),
                http=http,
            ),
            http=http,
        )


def _secret(_: str, raw: str) -> Secret:
    return Secret(raw)


def _base_url(variable: str, raw: str) -> str:
    # Never echo the value: a mistyped URL may hold a key.
    try:
        url = yarl.URL(raw)
    except (TypeError, ValueError):
        raise ConfigError(variable, "is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(variable, "must be an http:// or https:// URL with a host")
    if url.user is not None or url.password is not None:
        raise ConfigError(variable, "must not hold credentials; use the *_API_KEY variable")
    if url.query_string or url.fragment:
        raise ConfigError(variable, "must not have a query or a fragment")
    return str(url).rstrip("/")


def _positive_seconds(variable: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(variable, f"{raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(variable, f"{raw!r} must be a positive number of seconds")
    return value


def _connections(variable: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(variable, f"{raw!r} is not a whole number") from None
    if not 0 <= value <= 1_000_000:
        raise ConfigError(variable, f"{value} is outside 0..1000000 (0: no limit)")
    return value


def _boolean(variable: str, raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(variable, f"{raw!r} is not true or false")
