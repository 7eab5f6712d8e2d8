"""The HTTP handlers: parse and check the request, call the domain code, shape the answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final

import orjson
from aiohttp import web

from .listing import invalid_query, parse_list_query
from .metrics import METRICS
from .model import TaskRecord
from .problems import (
    TYPE_KEY_IN_USE,
    TYPE_KEY_REUSED,
    TYPE_NOT_FOUND,
    TYPE_RATE_LIMITED,
    TYPE_TASK_FINISHED,
    TYPE_TOO_LARGE,
    TYPE_UNAUTHORIZED,
    TYPE_UNAVAILABLE,
    TYPE_UNSUPPORTED_MEDIA,
    TYPE_VALIDATION,
    Problem,
)
from .ratelimit import retry_after_header
from .state import STATE, ApiState
from .store.errors import IdempotencyKeyInUse, IdempotencyKeyReused, TaskFinished, UnknownCursor
from .streaming import stream_sse, stream_websocket
from .tasks import Unavailable
from .validation import (
    MAX_IDEMPOTENCY_KEY,
    Submission,
    parse_submission,
    valid_idempotency_key,
)
from .views import task_list_view, task_view
from .workers import unserved_model

__all__ = ["accept_submission", "add_routes", "read_submission", "tenant_of"]

log = logging.getLogger(__name__)

_JSON: Final = "application/json"
_MAX_TASK_ID: Final = 64
_RETRY_AFTER: Final = {"Retry-After": "1"}
_CHALLENGE: Final = 'Bearer realm="ai-orchestrator"'
_CHALLENGE_INVALID: Final = 'Bearer realm="ai-orchestrator", error="invalid_token"'


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type=_JSON)


def tenant_of(request: web.Request, state: ApiState) -> str:
    """The request's tenant by its bearer key; a 401 problem if none."""
    authorization = request.headers.get("Authorization")
    tenant = state.keyring.tenant(authorization)
    if tenant is None:
        missing = authorization is None
        raise Problem(
            401,
            "Send 'Authorization: Bearer <API key>'." if missing else "The API key is not valid.",
            type=TYPE_UNAUTHORIZED,
            headers={"WWW-Authenticate": _CHALLENGE if missing else _CHALLENGE_INVALID},
        )
    return tenant


def _unavailable(exc: Unavailable, consequence: str = "") -> Problem:
    return Problem(
        503,
        f"The {exc.what} is unavailable right now{consequence}. Retry later.",
        type=TYPE_UNAVAILABLE,
        headers=_RETRY_AFTER,
    )


async def submit_task(request: web.Request) -> web.Response:
    """``POST /v1/tasks``: 202 with the new task, or 200 with the task an
    ``Idempotency-Key`` already created."""
    state = request.app[STATE]
    tenant, body, key = await read_submission(request, state)
    submission = parse_submission(body, max_prompt_chars=state.settings.max_prompt_chars)
    record, created = await accept_submission(request, state, tenant, submission, key)
    return _json(
        task_view(record),
        202 if created else 200,
        {"Location": f"/v1/tasks/{record.id}"},
    )


async def read_submission(request: web.Request, state: ApiState) -> tuple[str, bytes, str | None]:
    """The tenant, JSON body and ``Idempotency-Key`` of a submission (``POST /v1/tasks``,
    ``POST /v1/chat/completions``): 401, 429, 415, 413 or 400 problems before any body is
    parsed."""
    tenant = tenant_of(request, state)
    limiter = state.limiter
    if limiter is not None and (wait := limiter.acquire(tenant)) > 0:
        request.app[METRICS].task_rate_limited(tenant)
        raise Problem(
            429,
            f"Over this tenant's submission rate ({limiter.rate(tenant)}): nothing was "
            "stored. Retry after Retry-After seconds.",
            type=TYPE_RATE_LIMITED,
            headers={"Retry-After": retry_after_header(wait)},
        )
    headers = request.headers
    # The usual exact header skips aiohttp's parse of it (parameters, case) on every request.
    content_type = _JSON if headers.get("Content-Type") == _JSON else request.content_type
    if content_type != _JSON and not content_type.endswith("+json"):
        raise Problem(
            415,
            f"Send the task as {_JSON}, not {content_type}.",
            type=TYPE_UNSUPPORTED_MEDIA,
            headers={"Accept-Post": _JSON},
        )
    limit = state.settings.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise Problem(
            413, f"The body is {length} bytes; the limit is {limit}.", type=TYPE_TOO_LARGE
        )
    key = headers.get("Idempotency-Key")
    if key is not None and not valid_idempotency_key(key):
        raise Problem(
            400,
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters.",
            type=TYPE_VALIDATION,
            title="Invalid request",
            errors=[{"field": "Idempotency-Key", "message": "invalid header value"}],
        )
    return tenant, await _body(request, length, limit), key


async def accept_submission(
    request: web.Request,
    state: ApiState,
    tenant: str,
    submission: Submission,
    key: str | None,
    *,
    follow: bool = False,
) -> tuple[TaskRecord, bool]:
    """Submit the task (and count it): the record, and whether it is new; 503, 422 or 409
    problems when it cannot be taken, 400 for a model no live worker serves. ``follow``:
    the request follows the task's events next (``TaskService.submit``)."""
    if submission.model is not None:
        await _check_served(state, submission.model)
    try:
        record, created = await state.tasks.submit(tenant, submission, key, follow=follow)
    except Unavailable as exc:
        raise _unavailable(exc, "; the task was not accepted") from exc
    except IdempotencyKeyReused as exc:
        raise Problem(
            422,
            "This Idempotency-Key was used before with another request body. Send a new "
            "key for a new task.",
            type=TYPE_KEY_REUSED,
            title="Idempotency-Key reused",
        ) from exc
    except IdempotencyKeyInUse as exc:
        raise Problem(
            409,
            "Another request with this Idempotency-Key is still being processed. Retry "
            "shortly: you will get its task, or a new one if that request failed.",
            type=TYPE_KEY_IN_USE,
            headers=_RETRY_AFTER,
        ) from exc
    if created:
        metrics = request.app[METRICS]
        metrics.task_accepted(tenant, submission.model)
        if record.cached or record.joined is not None:
            metrics.task_shared(tenant, "hit" if record.joined is None else "joined")
    return record, created


async def _check_served(state: ApiState, model: str) -> None:
    """A 400 naming ``model`` when live workers exist and none of them serves it (the
    document served meanwhile says so: ``openapi.served_model_pattern``)."""
    reason = unserved_model(await state.workers.adverts(), model)
    if reason is not None:
        raise Problem(
            400,
            f"The request body is invalid (model): {reason}.",
            type=TYPE_VALIDATION,
            title="Invalid request",
            errors=[{"field": "model", "message": reason}],
        )


async def _body(request: web.Request, length: int | None, limit: int) -> bytes:
    """The request body. One with a Content-Length that has fully arrived (the usual small
    POST: one packet) is taken as it is, without ``read()``'s chunk loop and copies; else
    ``read()``. Either way a body over ``limit`` (the app's client_max_size; it may have been
    decompressed) is a 413."""
    content = request.content
    if length is not None and content.is_eof():
        body = content.read_nowait()
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
        return body
    return await request.read()


async def list_tasks(request: web.Request) -> web.Response:
    """``GET /v1/tasks``: the tenant's tasks within their TTL, newest first, a page at a time."""
    state = request.app[STATE]
    tenant = tenant_of(request, state)
    query = parse_list_query(request.query)
    try:
        page = await state.tasks.list_tasks(
            tenant, limit=query.limit, after=query.after, status=query.status
        )
    except UnknownCursor as exc:
        message = "not one of your tasks (it may have expired): start again without after"
        raise invalid_query([{"field": "after", "message": message}]) from exc
    except Unavailable as exc:
        raise _unavailable(exc) from exc
    return _json(task_list_view(page))


async def get_task(request: web.Request) -> web.Response:
    """``GET /v1/tasks/{task_id}``."""
    state = request.app[STATE]
    tenant = tenant_of(request, state)
    record = await _record(request, state, tenant)
    return _json(task_view(record))


async def cancel_task(request: web.Request) -> web.Response:
    """``POST /v1/tasks/{task_id}/cancel``: 202 with the task (cancelled, or running until its
    worker stops it); 404 for another tenant's; 409 once it has finished."""
    state = request.app[STATE]
    tenant = tenant_of(request, state)
    task_id = request.match_info["task_id"]
    record: TaskRecord | None = None
    if len(task_id) <= _MAX_TASK_ID:
        try:
            record = await state.tasks.cancel(tenant, task_id)
        except TaskFinished as exc:
            raise Problem(
                409,
                f"Task {task_id!r} has {exc.record.status.value} already: there is nothing "
                "to cancel.",
                type=TYPE_TASK_FINISHED,
                title="Task finished",
            ) from exc
        except Unavailable as exc:
            raise _unavailable(exc, "; the task was not cancelled, try again") from exc
    if record is None:
        raise Problem(
            404, f"There is no task {task_id!r} (or it has expired).", type=TYPE_NOT_FOUND
        )
    return _json(task_view(record), status=202)


async def _record(request: web.Request, state: ApiState, tenant: str) -> TaskRecord:
    task_id = request.match_info["task_id"]
    record: TaskRecord | None = None
    if len(task_id) <= _MAX_TASK_ID:
        try:
            record = await state.tasks.get(tenant, task_id)
        except Unavailable as exc:
            raise _unavailable(exc) from exc
    if record is None:
        raise Problem(
            404, f"There is no task {task_id!r} (or it has expired).", type=TYPE_NOT_FOUND
        )
    return record


async def task_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/tasks/{task_id}/events``: Server-Sent Events."""
    state = request.app[STATE]
    tenant = tenant_of(request, state)
    record = await _record(request, state, tenant)
    return await stream_sse(
        request, state.store, state.streams, tenant, record.id, heartbeat=state.heartbeat
    )


async def task_websocket(request: web.Request) -> web.StreamResponse:
    """``GET /v1/tasks/{task_id}/ws``: the same events over a WebSocket."""
    state = request.app[STATE]
    tenant = tenant_of(request, state)
    record = await _record(request, state, tenant)
    return await stream_websocket(
        request, state.store, state.streams, tenant, record.id, heartbeat=state.heartbeat
    )


async def health(request: web.Request) -> web.Response:
    """``GET /health``: 200 when the broker and the store answer, else 503 naming the failure;
    ``workers`` counts the live workers."""
    state = request.app[STATE]
    broker, store, workers = await asyncio.gather(
        _check("broker", state.broker.ping(), state.health_timeout),
        _check("store", state.store.ping(), state.health_timeout),
        state.workers.adverts(),
    )
    healthy = broker == "ok" and store == "ok"
    body = {
        "status": "ok" if healthy else "unavailable",
        "checks": {"broker": broker, "store": store},
        "service": state.settings.app_id,
        # Informational: with no worker alive, tasks are still accepted and wait in the queue.
        "workers": len(workers),
    }
    return _json(body, 200 if healthy else 503, None if healthy else _RETRY_AFTER)


async def _check(name: str, ping: Awaitable[None], timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await ping
    except TimeoutError:
        log.warning("health: %s did not answer within %.1fs", name, timeout)
        return "unavailable"
    except Exception as exc:
        log.warning("health: %s is unavailable: %s", name, exc)
        return "unavailable"
    return "ok"


async def openapi_document(request: web.Request) -> web.Response:
    """``GET /openapi.json``: with the models the live workers serve, when there are any."""
    from .openapi import document_bytes

    adverts = await request.app[STATE].workers.adverts()
    served = None
    if adverts:
        providers = tuple(sorted({p for advert in adverts for p in advert.providers}))
        aliases = tuple(sorted({name for advert in adverts for name in advert.aliases}))
        served = (providers, aliases)
    return web.Response(body=document_bytes(served), content_type=_JSON)


def add_routes(app: web.Application) -> None:
    """Register every route (the OpenAPI document lists exactly these)."""
    from .chat import chat_completions  # it builds on this module's handlers

    app.router.add_get("/health", health, allow_head=False)
    app.router.add_get("/openapi.json", openapi_document, allow_head=False)
    app.router.add_post("/v1/tasks", submit_task)
    app.router.add_get("/v1/tasks", list_tasks, allow_head=False)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/tasks/{task_id}", get_task, allow_head=False)
    app.router.add_post("/v1/tasks/{task_id}/cancel", cancel_task)
    app.router.add_get("/v1/tasks/{task_id}/events", task_events, allow_head=False)
    app.router.add_get("/v1/tasks/{task_id}/ws", task_websocket, allow_head=False)
