"""Model names to providers: ``echo``, ``openai/gpt-4o-mini``, ``gemini/gemini-2.0-flash``.

The part before the first ``/`` names the provider; the rest is the provider's own model name
(a bare prefix such as ``echo`` is its own model name).

A worker process builds its registry with ``registry_from_env(os.environ)``: ``echo``,
``openai`` and ``gemini``, configured from the worker's environment only (see ``settings``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping

import attrs
from opentelemetry import trace

from .echo import EchoProvider
from .errors import InvalidModel
from .gemini import GeminiProvider
from .openai import OpenAIProvider
from .protocol import Provider
from .settings import ProviderSettings

log = logging.getLogger(__name__)


@attrs.frozen
class Route:
    """Where one task goes: the provider, and the model name it understands."""

    provider: Provider
    model: str


class ProviderRegistry:
    """The providers of one worker process, found by model prefix; closes them at the end."""

    def __init__(self, providers: Iterable[Provider] = (), *, default_model: str = "echo") -> None:
        self._providers: dict[str, Provider] = {}
        self.default_model = default_model
        for provider in providers:
            self.register(provider)

    def register(self, provider: Provider) -> None:
        """Route the model prefix ``provider.name`` to ``provider`` (replacing any before)."""
        if not provider.name or "/" in provider.name:
            raise ValueError(f"provider name {provider.name!r} must be non-empty, without '/'")
        self._providers[provider.name] = provider

    @property
    def names(self) -> list[str]:
        """The registered prefixes, sorted."""
        return sorted(self._providers)

    def resolve(self, model: str | None) -> Route:
        """The route for ``model`` (``default_model`` when None or empty).

        Raises ``InvalidModel`` when no provider has the model's prefix.
        """
        name = (model or "").strip() or self.default_model
        prefix, _, rest = name.partition("/")
        provider = self._providers.get(prefix)
        if provider is None:
            known = ", ".join(self.names) or "none"
            # The name is the client's own input, echoed back truncated (no secrets here).
            raise InvalidModel(f"unknown model {name[:100]!r}; providers: {known}")
        return Route(provider=provider, model=rest or prefix)

    async def close(self) -> None:
        """Close every provider; one failing to close does not keep the others open."""
        for provider in self._providers.values():
            try:
                await provider.close()
            except Exception:
                log.exception("closing provider %s failed", provider.name)

    async def __aenter__(self) -> ProviderRegistry:
        return self

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            await self.close()


def default_registry(
    default_model: str = "echo",
    *,
    settings: ProviderSettings | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    echo: bool = True,
) -> ProviderRegistry:
    """``echo`` alone without ``settings``; with them, also ``openai`` and ``gemini``.
    ``echo=False`` (``ECHO_ENABLED=false``) leaves echo out: its tasks then fail as an
    unknown model, and the worker does not advertise it.

    ``tracer_provider`` (default: the global one) receives the providers' GenAI spans.
    """
    providers: list[Provider] = [EchoProvider()] if echo else []
    if settings is not None:
        providers.append(OpenAIProvider(settings.openai, tracer_provider=tracer_provider))
        providers.append(GeminiProvider(settings.gemini, tracer_provider=tracer_provider))
    return ProviderRegistry(providers, default_model=default_model)


def registry_from_env(
    environ: Mapping[str, str],
    *,
    default_model: str = "echo",
    tracer_provider: trace.TracerProvider | None = None,
) -> ProviderRegistry:
    """A worker's providers: ``echo``, ``openai`` and ``gemini`` configured from ``environ``.

    Raises ``ConfigError`` naming the variable when a provider setting is malformed. Nothing
    connects yet: sessions open on each provider's first call.
    """
    return default_registry(
        default_model,
        settings=ProviderSettings.from_env(environ),
        tracer_provider=tracer_provider,
    )
