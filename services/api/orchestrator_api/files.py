"""The OpenAI Files API for batches: ``POST /v1/files`` (multipart, ``purpose=batch``),
``GET /v1/files``, ``GET /v1/files/{file_id}``, ``GET /v1/files/{file_id}/content`` and
``DELETE /v1/files/{file_id}``, per tenant, in OpenAI's shapes.

An upload streams into the batch store a chunk at a time (never held whole in memory), up to
``MAX_BATCH_FILE_BYTES``; files expire ``BATCH_FILE_TTL_HOURS`` after they were made.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Final

import orjson
from aiohttp import BodyPartReader, web
from multidict import MultiMapping

from .batch.model import CHUNK_BYTES, FileInfo
from .batch.views import file_view, list_view
from .batches import BATCH_API, BatchApi, bad_request, not_found, unavailable
from .problems import TYPE_TOO_LARGE, TYPE_UNSUPPORTED_MEDIA, Problem
from .routes import tenant_of
from .state import STATE
from .store.errors import StoreError

__all__ = ["add_file_routes", "parse_page_query"]

_MULTIPART: Final = "multipart/form-data"
_MAX_ID: Final = 64
_MAX_FILENAME: Final = 255
_MAX_FIELD: Final = 1024
#: Room for the multipart framing and the small fields around the file.
_FRAMING: Final = 64 * 1024
_PURPOSES: Final = ("batch", "batch_output")
_EXPIRY: Final = ("expires_after[anchor]", "expires_after[seconds]")


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def parse_page_query(
    query: MultiMapping[str], *, max_limit: int, default_limit: int, extra: tuple[str, ...] = ()
) -> dict[str, str | int | None]:
    """``limit`` (1 to ``max_limit``), ``after`` and the ``extra`` names, each at most once;
    a 400 naming the first that is wrong."""
    values: dict[str, str | int | None] = {"limit": default_limit, "after": None}
    for name in ("limit", "after", *extra):
        given = query.getall(name, [])
        if len(given) > 1:
            raise bad_request("given more than once", name)
        values[name] = given[0] if given else values.get(name)
    raw = values["limit"]
    if isinstance(raw, str):
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= max_limit):
            raise bad_request(f"must be a whole number from 1 to {max_limit}", "limit")
        values["limit"] = int(raw)
    after = values["after"]
    if isinstance(after, str) and not 1 <= len(after) <= _MAX_ID:
        raise bad_request(f"must be an id of 1 to {_MAX_ID} characters", "after")
    return values


async def _limited(part: BodyPartReader, limit: int) -> AsyncIterator[bytes]:
    total = 0
    while chunk := await part.read_chunk(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise Problem(413, f"The file is over the limit of {limit} bytes.", type=TYPE_TOO_LARGE)
        yield chunk


async def _field(part: BodyPartReader, name: str) -> str:
    raw = bytearray()
    while chunk := await part.read_chunk(_MAX_FIELD):
        raw += chunk
        if len(raw) > _MAX_FIELD:
            raise bad_request(f"must be at most {_MAX_FIELD} bytes", name)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise bad_request("must be UTF-8 text", name) from None


def _check_expiry(name: str, value: str) -> None:
    """OpenAI's ``expires_after`` is checked, not used: files expire after
    ``BATCH_FILE_TTL_HOURS``."""
    if name.endswith("[anchor]"):
        if value != "created_at":
            raise bad_request("must be created_at", name)
    elif not (value.isascii() and value.isdigit() and 3600 <= int(value) <= 2_592_000):
        raise bad_request("must be a whole number of seconds from 3600 to 2592000", name)


async def upload_file(request: web.Request) -> web.Response:
    """``POST /v1/files``: the file, once all of it is stored."""
    tenant = tenant_of(request, request.app[STATE])
    api = request.app[BATCH_API]
    if request.content_type != _MULTIPART:
        raise Problem(
            415,
            f"Send the file as {_MULTIPART}, not {request.content_type}.",
            type=TYPE_UNSUPPORTED_MEDIA,
            headers={"Accept-Post": _MULTIPART},
        )
    length = request.content_length
    if length is not None and length > api.max_file_bytes + _FRAMING:
        raise Problem(
            413,
            f"The body is {length} bytes; files may be up to {api.max_file_bytes}.",
            type=TYPE_TOO_LARGE,
        )
    purpose: str | None = None
    stored: FileInfo | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise bad_request("nested multipart bodies are not supported", "file")
            if part.name == "purpose":
                purpose = await _field(part, "purpose")
                if purpose != "batch":
                    raise bad_request("only 'batch' is supported", "purpose")
            elif part.name == "file":
                if stored is not None:
                    raise bad_request("send one file", "file")
                stored = await _store(api, tenant, part)
            elif part.name in _EXPIRY:
                _check_expiry(part.name, await _field(part, part.name))
            else:
                raise bad_request("is not a field of an upload", str(part.name))
    except ValueError as exc:  # aiohttp: the body is not the multipart it says
        await _forget(api, tenant, stored)
        raise bad_request(f"the multipart body is malformed ({exc})", "file") from None
    except BaseException:
        await _forget(api, tenant, stored)
        raise
    if stored is None:
        raise bad_request("a 'file' part is required", "file")
    if purpose is None:
        await _forget(api, tenant, stored)
        raise bad_request("a 'purpose' part is required: 'batch'", "purpose")
    return _json(file_view(stored))


async def _store(api: BatchApi, tenant: str, part: BodyPartReader) -> FileInfo:
    filename = part.filename or "upload.jsonl"
    if len(filename) > _MAX_FILENAME:
        raise bad_request(f"the file name must be at most {_MAX_FILENAME} characters", "file")
    now = time.time()
    info = FileInfo(
        id=f"file-{os.urandom(12).hex()}",
        tenant=tenant,
        filename=filename,
        purpose="batch",
        bytes=0,
        created_at=now,
        expires_at=now + api.file_ttl_seconds,
    )
    try:
        return await api.store.put_file(info, _limited(part, api.max_file_bytes))
    except StoreError as exc:
        raise unavailable() from exc


async def _forget(api: BatchApi, tenant: str, stored: FileInfo | None) -> None:
    if stored is not None:
        with contextlib.suppress(StoreError):  # else it expires
            await api.store.delete_file(tenant, stored.id)


async def list_files(request: web.Request) -> web.Response:
    """``GET /v1/files``: the tenant's files, newest first unless ``order=asc``."""
    tenant = tenant_of(request, request.app[STATE])
    api = request.app[BATCH_API]
    query = parse_page_query(
        request.query, max_limit=10_000, default_limit=10_000, extra=("order", "purpose")
    )
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request("must be asc or desc", "order")
    purpose = query.get("purpose")
    if purpose is not None and purpose not in _PURPOSES:
        raise bad_request(f"must be one of {', '.join(_PURPOSES)}", "purpose")
    try:
        infos, more = await api.store.list_files(
            tenant,
            limit=int(query["limit"] or 1),
            after=query["after"] if isinstance(query["after"], str) else None,
            purpose=str(purpose) if purpose is not None else None,
            ascending=order == "asc",
        )
    except StoreError as exc:
        raise unavailable() from exc
    return _json(list_view([file_view(info) for info in infos], more))


async def _file(request: web.Request) -> tuple[BatchApi, FileInfo]:
    tenant = tenant_of(request, request.app[STATE])
    api = request.app[BATCH_API]
    file_id = request.match_info["file_id"]
    info = None
    if len(file_id) <= _MAX_ID:
        try:
            info = await api.store.get_file(tenant, file_id)
        except StoreError as exc:
            raise unavailable() from exc
    if info is None:
        raise not_found("file", file_id)
    return api, info


async def get_file(request: web.Request) -> web.Response:
    """``GET /v1/files/{file_id}``."""
    _, info = await _file(request)
    return _json(file_view(info))


async def delete_file(request: web.Request) -> web.Response:
    """``DELETE /v1/files/{file_id}``."""
    api, info = await _file(request)
    try:
        await api.store.delete_file(info.tenant, info.id)
    except StoreError as exc:
        raise unavailable() from exc
    return _json({"id": info.id, "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    """``GET /v1/files/{file_id}/content``: the bytes, streamed from the store."""
    api, info = await _file(request)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = info.bytes
    await response.prepare(request)
    async for chunk in api.store.read_file(info.id):
        await response.write(chunk)
    await response.write_eof()
    return response


def add_file_routes(app: web.Application) -> None:
    """Register the Files API's routes."""
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files", list_files, allow_head=False)
    app.router.add_get("/v1/files/{file_id}", get_file, allow_head=False)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content, allow_head=False)
