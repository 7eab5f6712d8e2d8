"""An in-process OTLP/HTTP trace receiver on a free loopback port, for end-to-end tests.

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` (plain, gzip or
deflate, as the exporter's ``OTEL_EXPORTER_OTLP_COMPRESSION`` makes it) and keeps every span
as a flat ``ReceivedSpan``. Services under test point at it with
``JAEGER_URI=127.0.0.1:<port>`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url``).

Two ways to run it:

- in the test's event loop: ``async with OtlpReceiver() as receiver: ...`` and
  ``await receiver.wait_for(lambda spans: ..., timeout=30)``;
- in its own thread, for synchronous tests: ``with OtlpReceiver().in_thread() as receiver:``
  and ``receiver.wait_for_sync(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import attrs
from aiohttp import web
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

#: OTLP span kinds (``Span.SpanKind`` enum values) by name.
KIND_NAMES = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}
#: OTLP status codes by name.
STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@attrs.frozen
class ReceivedLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@attrs.frozen
class ReceivedSpan:
    """One exported span, ids as lowercase hex (``parent_span_id`` is "" for a root)."""

    service_name: str
    resource: dict[str, Any]
    scope: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: str
    status_message: str
    links: tuple[ReceivedLink, ...]
    events: tuple[str, ...]


def decode_request(body: bytes) -> list[ReceivedSpan]:
    """The spans of one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service_name=str(resource.get("service.name", "")),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        name=span.name,
                        kind=KIND_NAMES.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        status=STATUS_NAMES.get(span.status.code, str(span.status.code)),
                        status_message=span.status.message,
                        links=tuple(
                            ReceivedLink(
                                trace_id=link.trace_id.hex(),
                                span_id=link.span_id.hex(),
                                attributes=_attributes(link.attributes),
                            )
                            for link in span.links
                        ),
                        events=tuple(event.name for event in span.events),
                    )
                )
    return spans


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OtlpReceiver:
    """Collects spans POSTed to ``/v1/traces``; ``requests`` counts the export calls."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.requests = 0
        self.encodings: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None

    # -- addresses --------------------------------------------------------------------------
    @property
    def host_port(self) -> str:
        """``127.0.0.1:<port>``, the form ``JAEGER_URI`` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, the form ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes."""
        return f"http://{self.host_port}"

    @property
    def traces_url(self) -> str:
        return f"{self.url}/v1/traces"

    # -- what arrived -----------------------------------------------------------------------
    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], *, timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """Wait until ``predicate(spans)`` holds; returns the spans, or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans
            if predicate(spans):
                return spans
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"spans never matched; got {[(s.service_name, s.name) for s in spans]}"
                )
            await asyncio.sleep(min(0.05, remaining))

    def wait_for_sync(
        self, predicate: Callable[[list[ReceivedSpan]], bool], *, timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """``wait_for`` for synchronous callers (e.g. with ``in_thread()``)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans
            if predicate(spans):
                return spans
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"spans never matched; got {[(s.service_name, s.name) for s in spans]}"
                )
            time.sleep(0.05)

    # -- HTTP -------------------------------------------------------------------------------
    async def _traces(self, request: web.Request) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "")
        body = await request.read()
        try:
            # aiohttp's parser already inflates gzip/deflate bodies; inflate by hand only if
            # a body still does not parse (a server without that feature, or double encoding).
            try:
                spans = decode_request(body)
            except DecodeError:
                spans = decode_request(_decompress(body, encoding))
        except (ValueError, OSError, zlib.error, DecodeError) as exc:
            return web.Response(status=400, text=f"bad OTLP request: {exc}")
        with self._lock:
            self.requests += 1
            self.encodings.append(encoding)
            self.headers.append(dict(request.headers))
            self._spans.extend(spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OtlpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self, timeout: float = 10.0) -> Iterator[OtlpReceiver]:
        """Serve from a private event loop in a daemon thread for the ``with`` block."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name="otlp-receiver", daemon=True)
        thread.start()
        if not ready.wait(timeout) or failure:
            raise RuntimeError(f"OTLP receiver did not start: {failure}")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)


@contextlib.asynccontextmanager
async def running_otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    """``async with running_otlp_receiver() as receiver:`` in an async test."""
    async with OtlpReceiver() as receiver:
        yield receiver
