"""Requests whose meaning is ambiguous are refused before any handler reads them.

Two ``Authorization`` headers could name two tenants, and which one wins would be an accident
of the parser: ``400``. A body in a ``Content-Encoding`` the API does not decode (an unknown
coding, a list of codings, the header twice) would be read as if it were not encoded:
``415`` with ``Accept-Encoding`` listing what is decoded (RFC 9110, section 15.5.16).
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from .problems import TYPE_UNSUPPORTED_MEDIA, Problem

__all__ = ["DECODED_ENCODINGS", "strict_input_middleware", "unsupported_encoding"]


def _decoded() -> tuple[str, ...]:
    try:  # not aiohttp's public API: without it, only what aiohttp always decodes
        from aiohttp import compression_utils
    except ImportError:  # pragma: no cover
        return ("identity", "gzip", "deflate")
    optional = (("br", "HAS_BROTLI"), ("zstd", "HAS_ZSTD"))
    extra = tuple(name for name, flag in optional if getattr(compression_utils, flag, False))
    return ("identity", "gzip", "deflate", *extra)


#: The content codings aiohttp decodes in this installation (``br`` needs Brotli, ``zstd``
#: backports.zstd or Python 3.14).
DECODED_ENCODINGS: Final = _decoded()


def unsupported_encoding() -> Problem:
    """The ``415`` for a request body in a coding the API does not decode."""
    listed = ", ".join(DECODED_ENCODINGS)
    return Problem(
        415,
        f"The request body's Content-Encoding is not supported: send one of {listed}.",
        type=TYPE_UNSUPPORTED_MEDIA,
        headers={"Accept-Encoding": listed},
    )


@web.middleware
async def strict_input_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``400`` for two ``Authorization`` headers, ``415`` for a body in an unknown coding."""
    headers = request.headers
    if len(headers.getall(hdrs.AUTHORIZATION, ())) > 1:
        raise Problem(400, "Send one Authorization header, not several.")
    if request.body_exists:
        encodings = headers.getall(hdrs.CONTENT_ENCODING, ())
        if len(encodings) > 1 or (
            encodings and encodings[0].strip().lower() not in DECODED_ENCODINGS
        ):
            raise unsupported_encoding()
    return await handler(request)
