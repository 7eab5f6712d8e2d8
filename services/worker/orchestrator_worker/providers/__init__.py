"""LLM providers behind one small protocol, routed by model prefix.

``echo`` (offline), ``openai/<model>`` (any OpenAI-compatible Chat Completions API) and
``gemini/<model>`` (Google's Generative Language API); ``registry_from_env`` builds a worker's
registry from its environment (``settings``), ``validate_parameters`` checks a task's
parameters by model prefix (the API runs it at submit time), ``errors`` classifies failures.
"""

from .echo import EchoProvider
from .errors import (
    AuthenticationFailed,
    ContentFiltered,
    InvalidModel,
    InvalidRequest,
    MalformedResponse,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    ServerError,
    StreamInterrupted,
    from_http_status,
    parse_duration,
    parse_retry_after,
    retry_after_from_headers,
)
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .parameters import validate_parameters
from .protocol import CompletionRequest, Finish, Provider, StreamItem
from .registry import ProviderRegistry, Route, default_registry, registry_from_env
from .settings import GeminiSettings, HttpSettings, OpenAISettings, ProviderSettings, Secret

__all__ = [
    "AuthenticationFailed",
    "CompletionRequest",
    "ContentFiltered",
    "EchoProvider",
    "Finish",
    "GeminiProvider",
    "GeminiSettings",
    "HttpSettings",
    "InvalidModel",
    "InvalidRequest",
    "MalformedResponse",
    "OpenAIProvider",
    "OpenAISettings",
    "Overloaded",
    "Provider",
    "ProviderError",
    "ProviderRegistry",
    "ProviderSettings",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QuotaExceeded",
    "RateLimited",
    "Route",
    "Secret",
    "ServerError",
    "StreamInterrupted",
    "StreamItem",
    "default_registry",
    "from_http_status",
    "parse_duration",
    "parse_retry_after",
    "registry_from_env",
    "retry_after_from_headers",
    "validate_parameters",
]
