"""``GET /v1/models`` and ``GET /v1/models/{model}``: what the live workers serve, in the
shape of OpenAI's Models API, so its SDKs' ``models.list()`` and ``models.retrieve()`` work.

The list is the union of the concrete model names the live workers advertise
(``WorkerAdvert.models()``): their aliases, the aliases' targets, their default models, and
``echo``. A provider prefix such as ``openai`` takes any of the provider's model names, which
no worker can list, so those are not listed; ``GET /v1/models/{model}`` answers for them too
(200 for any model a live worker serves, 404 otherwise). ``created`` is when the earliest
live worker offering the model started (Unix seconds); ``owned_by`` the provider prefix, or
``ai-orchestrator`` for an alias.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import orjson
from aiohttp import web

from orchestrator_tasks import WorkerAdvert

from .problems import TYPE_NOT_FOUND, Problem
from .routes import tenant_of  # the one bearer check every authenticated route uses
from .state import STATE

__all__ = ["add_model_routes", "model_list"]

#: ``owned_by`` of a model alias: a name this deployment defines, not a provider's model.
ALIAS_OWNER: Final = "ai-orchestrator"


def _entry(model: str, created: float, aliases: set[str]) -> dict[str, Any]:
    owner = ALIAS_OWNER if model in aliases else model.partition("/")[0]
    return {"id": model, "object": "model", "created": int(created), "owned_by": owner}


def model_list(adverts: Iterable[WorkerAdvert]) -> list[dict[str, Any]]:
    """The model objects of what ``adverts`` serve, sorted by id."""
    created: dict[str, float] = {}
    aliases: set[str] = set()
    for advert in adverts:
        aliases.update(advert.aliases)
        for model in advert.models():
            created[model] = min(created.get(model, advert.started_at), advert.started_at)
    return [_entry(model, created[model], aliases) for model in sorted(created)]


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``."""
    state = request.app[STATE]
    tenant_of(request, state)
    adverts = await state.workers.adverts()
    return _json({"object": "list", "data": model_list(adverts)})


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}``: the model, when a live worker serves it."""
    state = request.app[STATE]
    tenant_of(request, state)
    model = request.match_info["model"]
    adverts = [a for a in await state.workers.adverts() if a.serves(model)]
    if not adverts or model != model.strip():
        raise Problem(
            404,
            f"No running worker serves the model {model[:100]!r}; see GET /v1/models.",
            type=TYPE_NOT_FOUND,
        )
    aliases = {name for advert in adverts for name in advert.aliases}
    return _json(_entry(model, min(a.started_at for a in adverts), aliases))


def add_model_routes(app: web.Application) -> None:
    """Register the two routes (model ids hold ``/``: ``openai/gpt-4o-mini``)."""
    app.router.add_get("/v1/models", list_models, allow_head=False)
    app.router.add_get("/v1/models/{model:.+}", get_model, allow_head=False)
