"""What a worker tells the API about itself: the ``WorkerAdvert``, renewed under a TTL.

Each worker process announces one advert in the broker's presence group
``presence_group(tasks_stream)`` (so workers of another stream never count), renews it every
few seconds and withdraws it when it stops; a worker that dies simply stops renewing, and its
advert expires. The API reads the live adverts to list models (``GET /v1/models``), to count
workers (``GET /health``) and to refuse at submit a model no live worker serves.

What a worker serves: a model ``provider/name`` (or a bare ``provider``) whose prefix is one
of its ``providers``, and the names of its ``aliases`` (see the worker's ``routing``).
``models()`` is the concrete list to show: the aliases, their targets, the default model, and
``echo`` when echo is served; a provider such as ``openai`` takes any model name, so the names
beyond those are not listed (but are accepted).

``decode_advert`` ignores fields it does not know, so a newer worker's advert reads on an older
API, and refuses one that lacks a field or has one of the wrong type (``InvalidAdvert``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from .errors import ContractError
from .text import strip

__all__ = [
    "InvalidAdvert",
    "WorkerAdvert",
    "decode_advert",
    "encode_advert",
    "presence_group",
]

#: The model that every worker with the ``echo`` provider serves under exactly this name.
_ECHO: Final = "echo"


class InvalidAdvert(ContractError):
    """A presence payload that is not a ``WorkerAdvert``."""


def presence_group(tasks_stream: str) -> str:
    """The broker presence group of the workers reading ``tasks_stream``."""
    return f"workers:{tasks_stream}"


@attrs.frozen
class WorkerAdvert:
    """One worker process, as it announces itself."""

    consumer: str  # its consumer name in the tasks group
    providers: tuple[str, ...]  # the model prefixes it routes: echo, openai, gemini
    default_model: str  # what a task naming no model runs on
    aliases: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)
    concurrency: int = 1  # tasks it runs at once
    started_at: float = 0.0  # Unix time the process started

    def serves(self, model: str) -> bool:
        """True when a task naming ``model`` can run here (an alias, or a provider prefix)."""
        name = strip(model)
        return name in self.aliases or name.partition("/")[0] in self.providers

    def models(self) -> list[str]:
        """The concrete model names this worker serves (see the module docstring)."""
        names = [*self.aliases]
        for targets in self.aliases.values():
            names.extend(targets)
        names.append(self.default_model)
        if _ECHO in self.providers:
            names.append(_ECHO)
        return list(dict.fromkeys(names))


def encode_advert(advert: WorkerAdvert) -> dict[str, Any]:
    """The presence payload of ``advert`` (JSON-compatible)."""
    return {
        "consumer": advert.consumer,
        "providers": list(advert.providers),
        "default_model": advert.default_model,
        "aliases": {name: list(targets) for name, targets in advert.aliases.items()},
        "concurrency": advert.concurrency,
        "started_at": advert.started_at,
    }


def decode_advert(payload: Any) -> WorkerAdvert:
    """The advert in a presence payload; ``InvalidAdvert`` saying what is wrong."""
    if not isinstance(payload, Mapping):
        raise InvalidAdvert(f"not a WorkerAdvert: {type(payload).__name__}, not an object")
    consumer = _field(payload, "consumer", str)
    default_model = _field(payload, "default_model", str)
    providers = _field(payload, "providers", list)
    if not all(isinstance(p, str) for p in providers):
        raise InvalidAdvert("not a WorkerAdvert: providers must be strings")
    aliases = payload.get("aliases", {})
    if not isinstance(aliases, Mapping) or not all(
        isinstance(targets, list) and all(isinstance(t, str) for t in targets)
        for targets in aliases.values()
    ):
        raise InvalidAdvert("not a WorkerAdvert: aliases must map names to lists of models")
    concurrency = payload.get("concurrency", 1)
    started_at = payload.get("started_at", 0.0)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise InvalidAdvert("not a WorkerAdvert: concurrency must be an integer")
    if isinstance(started_at, bool) or not isinstance(started_at, int | float):
        raise InvalidAdvert("not a WorkerAdvert: started_at must be a number")
    return WorkerAdvert(
        consumer=consumer,
        providers=tuple(providers),
        default_model=default_model,
        aliases={str(name): tuple(targets) for name, targets in aliases.items()},
        concurrency=concurrency,
        started_at=float(started_at),
    )


def _field(payload: Mapping[str, Any], name: str, kind: type) -> Any:
    value = payload.get(name)
    if not isinstance(value, kind):
        raise InvalidAdvert(f"not a WorkerAdvert: {name} must be a {kind.__name__}")
    return value
