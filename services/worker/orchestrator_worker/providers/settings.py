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
``Secret`` and kept out of every ``repr``, and refused with a control character inside (no
HTTP header can carry one); base URLs may not carry credentials or a query.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import yarl

from orchestrator_settings import Env, Secret

__all__ = ["GeminiSettings", "HttpSettings", "OpenAISettings", "ProviderSettings", "Secret"]

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
GEMINI_DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"


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

        env = Env(environ)
        defaults = HttpSettings()
        http = HttpSettings(
            connect_timeout=env.seconds(
                "PROVIDER_CONNECT_TIMEOUT", defaults.connect_timeout, positive=True
            ),
            read_timeout=env.seconds("PROVIDER_READ_TIMEOUT", defaults.read_timeout, positive=True),
            max_connections=env.integer(
                "PROVIDER_MAX_CONNECTIONS",
                defaults.max_connections,
                low=0,
                high=1_000_000,
                hint="0: no limit",
            ),
            trace_content=env.boolean("TRACE_CONTENT", defaults.trace_content),
        )
        return cls(
            openai=OpenAISettings(
                base_url=_base_url(env, "OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL),
                api_key=env.secret("OPENAI_API_KEY"),
                http=http,
            ),
            gemini=GeminiSettings(
                base_url=_base_url(env, "GEMINI_BASE_URL", GEMINI_DEFAULT_BASE_URL),
                api_key=env.secret("GEMINI_API_KEY"),
                http=http,
            ),
            http=http,
        )


def _base_url(env: Env, variable: str, default: str) -> str:
    """An http(s) URL without credentials, query or fragment, normalised by yarl (no
    trailing slash). Never echoed: a mistyped URL may hold a key."""
    raw = env.url(variable, None, query=False)
    if raw is None:
        return default
    try:
        url = yarl.URL(raw)
    except (TypeError, ValueError):
        raise env.fail(variable, "is not a URL") from None
    if url.user is not None or url.password is not None:
        raise env.fail(variable, "must not hold credentials; use the *_API_KEY variable")
    return str(url).rstrip("/")
