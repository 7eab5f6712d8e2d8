"""Model aliases: one name for an ordered list of models, the later ones as fallbacks.

``MODEL_ALIASES`` defines them::

    MODEL_ALIASES="fast=openai/gpt-4o-mini|gemini/gemini-2.0-flash, smart=openai/gpt-4o"

Aliases are separated by ``,``, an alias from its targets by ``=``, targets by ``|``, in order
of preference; spaces around the separators are ignored. An alias name is letters, digits and
``_ . -`` (no ``/``, so it can never be mistaken for ``provider/model``) and may not be a
provider prefix (``echo``, ``openai``, ``gemini``); a target is a model name as a task would
give it, whose provider must exist (checked at startup: ``ModelRouter.check``). A task whose
``model`` (or, without one, ``DEFAULT_MODEL``) is an alias runs on its first target that can
take its ``parameters`` (the API accepts a parameter for an alias when any provider does:
``top_k`` skips an OpenAI target, ``reasoning_effort`` a Gemini one); the next such target is
tried when the first one's circuit is open or it fails retryably (see ``runner``). When no
target takes them all, the first target refuses the task (``invalid_request``). Any other
model name routes to its provider as before.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError
from .providers import InvalidModel, ProviderRegistry, Route, validate_parameters

__all__ = ["ModelRouter", "parse_aliases"]

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TARGET = re.compile(r"^[A-Za-z0-9_.\-]+(/[^\s,|=]+)?$")

VARIABLE = "MODEL_ALIASES"


def parse_aliases(variable: str, raw: str) -> dict[str, tuple[str, ...]]:
    """``alias=target|target,...`` as a mapping; ``ConfigError`` naming ``variable``."""
    aliases: dict[str, tuple[str, ...]] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, equals, rest = entry.partition("=")
        name = name.strip()
        if not equals:
            raise ConfigError(variable, f"{entry!r} is not alias=provider/model|provider/model")
        if not _ALIAS.match(name):
            raise ConfigError(
                variable, f"alias {name!r} may only hold letters, digits and _ . - (no '/')"
            )
        if name in aliases:
            raise ConfigError(variable, f"alias {name!r} is defined twice")
        targets = tuple(target.strip() for target in rest.split("|"))
        for target in targets:
            if not _TARGET.match(target):
                raise ConfigError(
                    variable, f"alias {name!r}: target {target!r} is not a model name"
                )
        if len(set(targets)) != len(targets):
            raise ConfigError(variable, f"alias {name!r} lists a target twice")
        aliases[name] = targets
    return aliases


class ModelRouter:
    """A task's model name to the routes to try, in order (one unless it is an alias)."""

    def __init__(
        self, registry: ProviderRegistry, aliases: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self._registry = registry
        self.aliases: dict[str, tuple[str, ...]] = {
            name: tuple(targets) for name, targets in (aliases or {}).items()
        }

    def check(self, *, default_model: bool = True) -> None:
        """Raise ``ConfigError`` (naming ``MODEL_ALIASES`` or ``DEFAULT_MODEL``) for an alias
        that shadows a provider or aliases, a target no provider serves, or (with
        ``default_model``) a default model that routes nowhere."""
        providers = set(self._registry.names)
        for name, targets in self.aliases.items():
            if name in providers:
                raise ConfigError(VARIABLE, f"alias {name!r} is the name of a provider")
            for target in targets:
                if target in self.aliases:
                    raise ConfigError(
                        VARIABLE, f"alias {name!r}: target {target!r} is an alias, not a model"
                    )
                try:
                    self._registry.resolve(target)
                except InvalidModel:
                    known = ", ".join(sorted(providers))
                    raise ConfigError(
                        VARIABLE,
                        f"alias {name!r}: no provider serves {target!r} (known: {known})",
                    ) from None
        default = self._registry.default_model
        if default_model and default not in self.aliases:
            try:
                self._registry.resolve(default)
            except InvalidModel:
                known = ", ".join(sorted(providers | set(self.aliases)))
                raise ConfigError(
                    "DEFAULT_MODEL", f"{default!r} names no provider or alias (known: {known})"
                ) from None

    def routes(self, model: str | None, parameters: Mapping[str, Any] | None = None) -> list[Route]:
        """Where to send a task of ``model`` (``DEFAULT_MODEL`` when None or empty), first
        choice first; raises ``InvalidModel`` when no provider serves it. An alias's targets
        that cannot take ``parameters`` are left out, unless none can (then all stay, and the
        first refuses the task with the reason)."""
        name = (model or "").strip() or self._registry.default_model
        targets = self.aliases.get(name)
        if targets is None:
            return [self._registry.resolve(name)]
        routes = [self._registry.resolve(target) for target in targets]
        if not parameters:
            return routes
        eligible = [
            route
            for route in routes
            if not validate_parameters(f"{route.provider.name}/{route.model}", parameters)
        ]
        if eligible and len(eligible) < len(routes):
            log.debug(
                "alias %s: %s cannot take the task's parameters",
                name,
                ", ".join(f"{r.provider.name}/{r.model}" for r in routes if r not in eligible),
            )
        return eligible or routes
