"""The web console (``/console``): static files shipped in this package, and the one JSON
endpoint it reads its settings from (``GET /v1/console/config``).

The files are plain HTML, CSS and JavaScript modules (no build step): read once, served
from memory with a strict Content-Security-Policy (no inline script or style, nothing but
this origin), ``nosniff``, no referrer, gzipped once at start (for clients that accept it),
and an ETag per encoding so a reload revalidates (``304``) instead of downloading again. The
API key lives in the browser's ``sessionStorage`` and goes out only as the ``Authorization``
header of the console's own ``fetch()`` calls.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path
from typing import Final

import attrs
import orjson
from aiohttp import web

from .problems import TYPE_NOT_FOUND, Problem
from .routes import tenant_of
from .state import STATE

__all__ = ["CONSOLE_PATH", "SECURITY_HEADERS", "add_console_routes", "console_files"]

CONSOLE_PATH: Final = "/console"
STATIC_DIR: Final = Path(__file__).with_name("console_static")

#: Sent with every console file: the page may load only this origin's scripts and styles,
#: talk only to this origin, and be framed by no one.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate every time (the names carry no hash); the ETag makes that a 304.
    "Cache-Control": "no-cache",
    "Vary": "Accept-Encoding",
}

_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@attrs.frozen
class ConsoleFile:
    body: bytes
    content_type: str
    etag: str
    #: The body gzipped, and its ETag; None where gzip would not make it smaller.
    gzipped: bytes | None = None
    gzip_etag: str = ""


@functools.cache
def console_files() -> dict[str, ConsoleFile]:
    """The shipped files by name (``index.html``, ``app.js``, ...), read once."""
    files = {}
    for path in sorted(STATIC_DIR.iterdir()):
        content_type = _TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:32]
        gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        files[path.name] = ConsoleFile(
            body,
            content_type,
            f'"{digest}"',
            gzipped if len(gzipped) < len(body) else None,
            f'"{digest}-gzip"',
        )
    return files


def _accepts_gzip(request: web.Request) -> bool:
    """Whether ``Accept-Encoding`` takes gzip (``gzip`` or ``*``, at a q above 0)."""
    for item in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in {"gzip", "*"}:
            continue
        q = params.strip().lower()
        if not q.startswith("q="):
            return True
        try:
            return float(q[2:]) > 0
        except ValueError:
            return False
    return False


def _matches(request: web.Request, etag: str) -> bool:
    tags = {
        tag.strip().removeprefix("W/")
        for tag in request.headers.get("If-None-Match", "").split(",")
    }
    return etag in tags or "*" in tags


def _serve(request: web.Request, name: str) -> web.Response:
    file = console_files().get(name)
    if file is None:
        raise Problem(404, "No such console file.", type=TYPE_NOT_FOUND)
    body, etag, encoding = file.body, file.etag, None
    if file.gzipped is not None and _accepts_gzip(request):
        body, etag, encoding = file.gzipped, file.gzip_etag, "gzip"
    headers = {**SECURITY_HEADERS, "ETag": etag}
    if _matches(request, etag):
        return web.Response(status=304, headers=headers)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    response = web.Response(body=body, headers=headers, content_type=file.content_type)
    response.charset = "utf-8"
    return response


async def console_index(request: web.Request) -> web.Response:
    """``GET /console``: the console's page (every view is this one page)."""
    return _serve(request, "index.html")


async def console_static(request: web.Request) -> web.Response:
    """``GET /console/static/{name}``: a script, style sheet or icon of the console."""
    name = request.match_info["name"]
    if name == "index.html":
        raise Problem(404, "No such console file.", type=TYPE_NOT_FOUND)
    return _serve(request, name)


async def console_config(request: web.Request) -> web.Response:
    """``GET /v1/console/config``: who the key belongs to and what the console shows it."""
    state = request.app[STATE]
    tenant = tenant_of(request, state)
    settings = state.settings
    body = {
        "tenant": tenant,
        "admin": tenant in settings.admin_tenants,
        "trace_url": settings.console_trace_url,
    }
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def add_console_routes(app: web.Application) -> None:
    """Register the console's page, its static files and its config endpoint."""
    app.router.add_get(CONSOLE_PATH, console_index, allow_head=False)
    app.router.add_get(CONSOLE_PATH + "/static/{name}", console_static, allow_head=False)
    app.router.add_get("/v1/console/config", console_config, allow_head=False)
