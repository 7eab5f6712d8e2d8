"""Operator endpoints (``/v1/admin/...``), for the tenants named in ``ADMIN_TENANTS``: the
tasks stream's queue, the live workers, and its dead letters with replay and purge (the
same code as ``ai-orchestrator dead-letters``: ``dead_letters.py``).

Any other tenant gets ``403``; no key, ``401``. Dead letters belong to every tenant, which is
why only operators see them.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from orchestrator_broker import BrokerError, dead_letter_stream
from orchestrator_tasks import TASKS_GROUP

from .console_docs import TYPE_FORBIDDEN, TYPE_REPLAY_FAILED
from .dead_letters import DeadLetterError, describe, one_line, purge, replay
from .problems import TYPE_UNAVAILABLE, TYPE_VALIDATION, Problem
from .routes import tenant_of
from .state import STATE, ApiState
from .store.errors import StoreError

__all__ = ["TYPE_FORBIDDEN", "TYPE_REPLAY_FAILED", "add_admin_routes"]

_MAX_LIST: Final = 500
_MAX_REPLAY_IDS: Final = 1000


def _json(body: object) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _operator(request: web.Request) -> ApiState:
    state = request.app[STATE]
    tenant = tenant_of(request, state)
    if tenant not in state.settings.admin_tenants:
        raise Problem(
            403,
            "Only the operator tenants (ADMIN_TENANTS) may use this endpoint.",
            type=TYPE_FORBIDDEN,
            title="Forbidden",
        )
    return state


def _invalid(field: str, message: str) -> Problem:
    return Problem(
        400,
        f"The request is invalid ({field}): {message}.",
        type=TYPE_VALIDATION,
        title="Invalid request",
        errors=[{"field": field, "message": message}],
    )


def _broker_down(exc: Exception) -> Problem:
    return Problem(
        503,
        f"The broker is unavailable right now: {one_line(exc)}. Retry later.",
        type=TYPE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


async def queues(request: web.Request) -> web.Response:
    """``GET /v1/admin/queues``: the tasks stream's queues for the workers' group, and the
    live workers.

    One row per queue a task waits in: the stream itself (``priority`` null: tasks
    dispatched to the workers and not yet read, unkeyed and delayed ones; ``pending``: those
    being worked on), then the waiting room of each priority (tasks not dispatched yet;
    none of them is pending). The waiting column adds up to the broker's backlog.
    ``priorities`` maps each priority to its waiting-room depth.
    """
    state = _operator(request)
    stream = state.settings.stream
    try:
        backlog = await state.broker.backlog(stream, TASKS_GROUP)
        pending = await state.broker.pending_count(stream, TASKS_GROUP)
        depths = await state.broker.queue_depths(stream, TASKS_GROUP)
    except BrokerError as exc:
        raise _broker_down(exc) from exc
    adverts = await state.workers.adverts()
    row = {"stream": stream, "group": TASKS_GROUP}
    return _json(
        {
            "queues": [
                {
                    **row,
                    "priority": None,
                    # Read one after the other, so a dispatch in between could make it < 0.
                    "backlog": max(0, backlog - sum(depths.values())),
                    "pending": pending,
                },
                *({**row, "priority": p, "backlog": depths[p], "pending": 0} for p in depths),
            ],
            "priorities": depths,
            "workers": [
                {
                    "consumer": advert.consumer,
                    "providers": list(advert.providers),
                    "default_model": advert.default_model,
                    "concurrency": advert.concurrency,
                    "started_at": int(advert.started_at),
                }
                for advert in adverts
            ],
        }
    )


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIST:
        raise _invalid("limit", f"must be an integer from 1 to {_MAX_LIST}")
    return int(raw)


async def list_dead_letters(request: web.Request) -> web.Response:
    """``GET /v1/admin/dead-letters?limit=&after=``: the oldest dead letters of the tasks
    stream, a page at a time (OpenAI's list shape; ``after`` is a page's ``last_id``)."""
    state = _operator(request)
    limit = _limit(request)
    after = request.query.get("after") or None
    try:
        page = await state.broker.dead_letters(state.settings.stream, limit + 1, after)
    except BrokerError as exc:
        raise _broker_down(exc) from exc
    data = [describe(dead) for dead in page[:limit]]
    return _json(
        {
            "object": "list",
            "stream": dead_letter_stream(state.settings.stream),
            "data": data,
            "first_id": data[0]["entry_id"] if data else None,
            "last_id": data[-1]["entry_id"] if data else None,
            "has_more": len(page) > limit,
        }
    )


async def _object_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise Problem(415, "Send application/json.", headers={"Accept-Post": "application/json"})
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _invalid("body", "not valid JSON") from exc
    if not isinstance(body, dict):
        raise _invalid("body", "must be a JSON object")
    return body


async def replay_dead_letters(request: web.Request) -> web.Response:
    """``POST /v1/admin/dead-letters/replay`` with ``{"task_ids": [...]}`` or
    ``{"all": true}``: each task runs again under its id; ``409`` when nothing could be."""
    state = _operator(request)
    body = await _object_body(request)
    task_ids = body.get("task_ids")
    everything = body.get("all") is True
    if everything == (task_ids is not None):
        raise _invalid("task_ids", 'send either "task_ids" or "all": true')
    if task_ids is not None and (
        not isinstance(task_ids, list)
        or not 1 <= len(task_ids) <= _MAX_REPLAY_IDS
        or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in task_ids)
    ):
        raise _invalid("task_ids", f"must be 1 to {_MAX_REPLAY_IDS} task ids")
    replayed: list[dict[str, Any]] = []
    try:
        await replay(
            state.broker,
            state.store,
            state.settings.stream,
            None if everything else task_ids,
            lambda task_id, attempts: replayed.append({"task_id": task_id, "attempts": attempts}),
        )
    except DeadLetterError as exc:
        unavailable = isinstance(exc.__cause__, BrokerError | StoreError)
        raise Problem(
            503 if unavailable else 409,
            one_line(exc),
            type=TYPE_REPLAY_FAILED,
            title="Replay failed",
        ) from exc
    except (BrokerError, StoreError) as exc:
        raise _broker_down(exc) from exc
    return _json({"replayed": replayed})


async def purge_dead_letters(request: web.Request) -> web.Response:
    """``POST /v1/admin/dead-letters/purge`` with ``{}`` (all) or
    ``{"older_than_seconds": N}``: how many dead letters were deleted."""
    state = _operator(request)
    body = await _object_body(request)
    older = body.get("older_than_seconds")
    if older is not None and (
        isinstance(older, bool) or not isinstance(older, int | float) or older < 0
    ):
        raise _invalid("older_than_seconds", "must be a number >= 0")
    try:
        count = await purge(state.broker, state.settings.stream, older)
    except BrokerError as exc:
        raise _broker_down(exc) from exc
    return _json({"purged": count})


def add_admin_routes(app: web.Application) -> None:
    """Register the operator endpoints."""
    app.router.add_get("/v1/admin/queues", queues, allow_head=False)
    app.router.add_get("/v1/admin/dead-letters", list_dead_letters, allow_head=False)
    app.router.add_post("/v1/admin/dead-letters/replay", replay_dead_letters)
    app.router.add_post("/v1/admin/dead-letters/purge", purge_dead_letters)
