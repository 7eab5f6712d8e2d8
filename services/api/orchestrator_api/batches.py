"""The OpenAI Batch API on top of tasks: ``POST /v1/batches``, ``GET /v1/batches``,
``GET /v1/batches/{batch_id}`` and ``POST /v1/batches/{batch_id}/cancel``, per tenant.

A batch names an uploaded JSONL file (``POST /v1/files``) of ``/v1/chat/completions``
requests. Each line becomes a task of the tenant, as if sent to ``POST /v1/chat/completions``
(at ``low`` priority once tasks have one, issue 12); the ``BatchRunner`` of whichever API
process holds the batch's lease submits them, collects their answers and writes the output
and error files. A line that is not a valid request goes to the error file; it does not fail
the batch. Every line is in exactly one of the two files. Cancelling cancels the unfinished
tasks; the batch ends ``cancelled`` with the answers that came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
import orjson
from aiohttp import web

from orchestrator_telemetry.runtime import cleanup_ctx, closing

from .batch.lines import CHAT_ENDPOINT
from .batch.model import BatchRecord, BatchStatus
from .batch.protocol import BatchStore
from .batch.runner import BatchRunner
from .batch.views import batch_view, list_view
from .config import ApiSettings
from .problems import (
    TYPE_NOT_FOUND,
    TYPE_TASK_FINISHED,
    TYPE_TOO_LARGE,
    TYPE_UNAVAILABLE,
    TYPE_UNSUPPORTED_MEDIA,
    TYPE_VALIDATION,
    Problem,
)
from .routes import tenant_of
from .state import STATE
from .store.errors import StoreError

__all__ = [
    "BATCH_API",
    "BATCH_STORE",
    "BatchApi",
    "add_batch_api",
    "bad_request",
    "build_batch_store",
    "not_found",
    "unavailable",
]

_JSON: Final = "application/json"
_MAX_ID: Final = 64
_WINDOW: Final = {"24h": 86_400.0}
_FIELDS: Final = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)
_MAX_METADATA: Final = 16


@attrs.frozen
class BatchApi:
    """What the Files and Batches handlers use."""

    store: BatchStore
    runner: BatchRunner
    max_file_bytes: int
    file_ttl_seconds: float


BATCH_API = web.AppKey("orchestrator_api.batch_api", BatchApi)
BATCH_STORE = web.AppKey("orchestrator_api.batch_store", BatchStore)


def bad_request(message: str, param: str) -> Problem:
    """A 400 naming ``param``."""
    return Problem(
        400,
        f"{param}: {message}.",
        type=TYPE_VALIDATION,
        title="Invalid request",
        errors=[{"field": param, "message": message}],
    )


def not_found(what: str, ident: str) -> Problem:
    return Problem(404, f"There is no {what} {ident!r} (or it has expired).", type=TYPE_NOT_FOUND)


def unavailable() -> Problem:
    return Problem(
        503,
        "The batch store is unavailable right now. Retry later.",
        type=TYPE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type=_JSON)


async def _body(request: web.Request, limit: int) -> dict[str, Any]:
    if request.content_type != _JSON:
        raise Problem(
            415,
            f"Send the batch as {_JSON}, not {request.content_type}.",
            type=TYPE_UNSUPPORTED_MEDIA,
            headers={"Accept-Post": _JSON},
        )
    length = request.content_length
    if length is not None and length > limit:
        raise Problem(
            413, f"The body is {length} bytes; the limit is {limit}.", type=TYPE_TOO_LARGE
        )
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise Problem(400, "The body is not valid JSON.", type=TYPE_VALIDATION) from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object", "body")
    return data


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > _MAX_METADATA:
        raise bad_request(f"must be an object of up to {_MAX_METADATA} pairs", "metadata")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise bad_request(
                "keys must be up to 64 characters, values strings of up to 512", "metadata"
            )
    return dict(value)


def _check_expiry(value: Any) -> None:
    if value is None:
        return
    if (
        not isinstance(value, dict)
        or set(value) != {"anchor", "seconds"}
        or value["anchor"] != "created_at"
        or type(value["seconds"]) is not int
        or not 3600 <= value["seconds"] <= 2_592_000
    ):
        raise bad_request(
            "must be {anchor: created_at, seconds: 3600 to 2592000}", "output_expires_after"
        )


async def create_batch(request: web.Request) -> web.Response:
    """``POST /v1/batches``: the new batch, ``validating``."""
    state = request.app[STATE]
    tenant = tenant_of(request, state)
    api = request.app[BATCH_API]
    data = await _body(request, state.settings.max_body_bytes)
    for name in data:
        if name not in _FIELDS:
            raise bad_request("is not supported", str(name))
    file_id = data.get("input_file_id")
    if not isinstance(file_id, str) or not 1 <= len(file_id) <= _MAX_ID:
        raise bad_request("must be the id of a file uploaded with purpose batch", "input_file_id")
    if data.get("endpoint") != CHAT_ENDPOINT:
        raise bad_request(f"only {CHAT_ENDPOINT} is supported", "endpoint")
    window = data.get("completion_window")
    if not isinstance(window, str) or window not in _WINDOW:
        raise bad_request("only 24h is supported", "completion_window")
    metadata = _metadata(data.get("metadata"))
    _check_expiry(data.get("output_expires_after"))
    try:
        info = await api.store.get_file(tenant, file_id)
        if info is None or info.purpose != "batch":
            raise bad_request(
                "no such file with purpose batch (it may have expired)", "input_file_id"
            )
        now = time.time()
        record = BatchRecord(
            id=f"batch_{os.urandom(16).hex()}",
            tenant=tenant,
            input_file_id=file_id,
            endpoint=CHAT_ENDPOINT,
            completion_window=window,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + _WINDOW[window],
            metadata=metadata,
        )
        await api.store.create_batch(record)
    except StoreError as exc:
        raise unavailable() from exc
    api.runner.kick()
    return _json(batch_view(record))


async def list_batches(request: web.Request) -> web.Response:
    """``GET /v1/batches``: the tenant's batches, newest first."""
    from .files import parse_page_query

    tenant = tenant_of(request, request.app[STATE])
    api = request.app[BATCH_API]
    query = parse_page_query(request.query, max_limit=100, default_limit=20)
    after = query["after"]
    try:
        records, more = await api.store.list_batches(
            tenant, limit=int(query["limit"] or 1), after=after if isinstance(after, str) else None
        )
    except StoreError as exc:
        raise unavailable() from exc
    return _json(list_view([batch_view(record) for record in records], more))


async def _batch(request: web.Request, cancel: bool = False) -> BatchRecord:
    tenant = tenant_of(request, request.app[STATE])
    api = request.app[BATCH_API]
    batch_id = request.match_info["batch_id"]
    record = None
    if len(batch_id) <= _MAX_ID:
        try:
            if cancel:
                record = await api.store.request_cancel(tenant, batch_id, time.time())
            else:
                record = await api.store.get_batch(tenant, batch_id)
        except StoreError as exc:
            raise unavailable() from exc
    if record is None:
        raise not_found("batch", batch_id)
    return record


async def get_batch(request: web.Request) -> web.Response:
    """``GET /v1/batches/{batch_id}``."""
    return _json(batch_view(await _batch(request)))


async def cancel_batch(request: web.Request) -> web.Response:
    """``POST /v1/batches/{batch_id}/cancel``: the batch, ``cancelling`` until its unfinished
    tasks have stopped, then ``cancelled``; 409 for one that finished otherwise."""
    record = await _batch(request, cancel=True)
    status = record.shown_status
    if status.terminal and status is not BatchStatus.CANCELLED:
        raise Problem(
            409,
            f"Batch {record.id!r} is {status.value} already: there is nothing to cancel.",
            type=TYPE_TASK_FINISHED,
            title="Batch finished",
        )
    request.app[BATCH_API].runner.kick()
    return _json(batch_view(record))


def build_batch_store(settings: ApiSettings) -> BatchStore:
    """The batch store ``REDIS_URI`` asks for (in-memory when unset)."""
    ttl = settings.batch_file_ttl_hours * 3600.0
    if settings.redis_url is None:
        from .batch.memory import MemoryBatchStore

        return MemoryBatchStore()
    from .batch.redis import RedisBatchStore

    return RedisBatchStore.from_url(settings.redis_url, ttl_seconds=ttl + _WINDOW["24h"])


def add_batch_api(
    app: web.Application, settings: ApiSettings, store: BatchStore | None = None
) -> None:
    """The Files and Batches routes, and, while the app runs, the batch store (built from
    ``settings`` unless given: then it is the caller's to close) and this process's
    ``BatchRunner``. Call after the app's ``STATE`` context is added: the runner submits
    through its ``TaskService``."""
    from .files import add_file_routes

    store_key = BATCH_STORE
    if store is None:
        built = cleanup_ctx(store_key, lambda _: closing(build_batch_store(settings)))
        app.cleanup_ctx.append(built)
    else:
        app[store_key] = store

    @contextlib.asynccontextmanager
    async def batch_api(app: web.Application) -> AsyncIterator[BatchApi]:
        state = app[STATE]
        runner = BatchRunner(
            app[store_key],
            state.tasks,
            file_ttl_seconds=settings.batch_file_ttl_hours * 3600.0,
            max_prompt_chars=settings.max_prompt_chars,
            max_line_bytes=settings.max_body_bytes,
            adverts=state.workers.adverts,
        )
        task = asyncio.create_task(runner.run(), name="batch-runner")
        yield BatchApi(
            store=app[store_key],
            runner=runner,
            max_file_bytes=settings.max_batch_file_bytes,
            file_ttl_seconds=settings.batch_file_ttl_hours * 3600.0,
        )
        await runner.stop()
        await task

    app.cleanup_ctx.append(cleanup_ctx(BATCH_API, batch_api))
    add_file_routes(app)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches, allow_head=False)
    app.router.add_get("/v1/batches/{batch_id}", get_batch, allow_head=False)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
