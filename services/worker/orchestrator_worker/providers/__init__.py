"""LLM providers behind one small protocol, routed by model prefix."""

from .echo import EchoProvider
from .errors import (
    AuthenticationFailed,
    ContentFiltered,
    InvalidModel,
    InvalidRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    from_http_status,
    parse_retry_after,
)
from .protocol import CompletionRequest, Finish, Provider, StreamItem
from .registry import ProviderRegistry, Route, default_registry

__all__ = [
    "AuthenticationFailed",
    "CompletionRequest",
    "ContentFiltered",
    "EchoProvider",
    "Finish",
    "InvalidModel",
    "InvalidRequest",
    "Provider",
    "ProviderError",
    "ProviderRegistry",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RateLimited",
    "Route",
    "ServerError",
    "StreamItem",
    "default_registry",
    "from_http_status",
    "parse_retry_after",
]
