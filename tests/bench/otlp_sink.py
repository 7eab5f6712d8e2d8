"""A cheap OTLP/HTTP trace sink for ``bench --tracing``: counts spans, keeps none.

``python -m tests.bench.otlp_sink --port N`` serves, on ``127.0.0.1``:

- ``POST /v1/traces``: a protobuf ``ExportTraceServiceRequest``, plain or gzip (as the
  exporter's ``OTEL_EXPORTER_OTLP_COMPRESSION`` makes it); the spans are counted and dropped,
  the answer is ``200`` with an empty ``ExportTraceServiceResponse``, as a collector sends.
- ``GET /stats``: ``{"requests": n, "spans": n, "rejected": n}`` since it started.

Unlike ``tests/support/otlp_receiver.py`` (which keeps every span for assertions) it holds
only counters, so a long benchmark run costs it parsing and nothing more.
"""

from __future__ import annotations

import argparse
import gzip
import zlib

import attrs
import orjson
from aiohttp import web
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["SinkStats", "make_app", "stats_key"]

_EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()
_GZIP_MAGIC = b"\x1f\x8b"


@attrs.define
class SinkStats:
    """Export calls accepted, the spans they held, and bodies that did not parse."""

    requests: int = 0
    spans: int = 0
    rejected: int = 0


stats_key = web.AppKey("stats", SinkStats)


def _spans_in(body: bytes) -> int:
    request = ExportTraceServiceRequest.FromString(body)
    return sum(
        len(scope_spans.spans)
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
    )


async def traces(request: web.Request) -> web.Response:
    stats = request.app[stats_key]
    body = await request.read()
    # aiohttp inflates a gzip body itself (Content-Encoding); inflate here only one it left
    # compressed. A serialized request never starts with the gzip magic (field 1 is 0x0a).
    try:
        if body[:2] == _GZIP_MAGIC:
            body = gzip.decompress(body)
        spans = _spans_in(body)
    except (DecodeError, OSError, EOFError, zlib.error):
        stats.rejected += 1
        return web.Response(status=400, text="not an ExportTraceServiceRequest")
    stats.requests += 1
    stats.spans += spans
    return web.Response(body=_EMPTY_RESPONSE, content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    body = orjson.dumps(attrs.asdict(request.app[stats_key]))
    return web.Response(body=body, content_type="application/json")


def make_app() -> web.Application:
    # A batch of 512 spans is well under 1 MiB, aiohttp's default; room to spare anyway.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[stats_key] = SinkStats()
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.otlp_sink")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
