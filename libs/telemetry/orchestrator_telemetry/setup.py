"""One call per service: ``setup_telemetry(TelemetrySettings.from_env(os.environ))``.

It builds the tracer provider (resource, sampler, OTLP/HTTP exporter behind a
``BatchSpanProcessor``), installs it as the global provider (the aiohttp instrumentation and
``trace.get_tracer`` use that), and returns a ``Telemetry`` whose ``shutdown()`` flushes what
is still buffered. Call ``shutdown()`` (or ``await aclose()``) when the service stops.

While the collector is unreachable, one warning says spans are being dropped and why, the
SDK's own export errors are logged at most once a minute (``log_throttle``), and one info
line says when the collector is back and what was lost (``export_health``).

When exporting, the provider is the SDK's with the configured sampler, whose tracers skip
the SDK for spans the sampler drops (``sampling``).
Without an endpoint (and no exporter passed in) the provider is a ``ContextOnlyTracerProvider``:
spans get real trace ids and the configured sampler's flags, so context crosses the broker and
responses can name their trace, but nothing is recorded (recording spans only to drop them
cost a busy API a third of its CPU), exported or logged.
With ``OTEL_SDK_DISABLED=true`` the provider is a no-op one: no ids are made, incoming
context still passes through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs
import requests
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from .config import TelemetrySettings, redact_url
from .context_only import ContextOnlyTracerProvider
from .export_health import ExportHealth, problem_noting_session
from .log_throttle import acquire_sdk_throttle, release_sdk_throttle
from .otlp_exporter import FastOTLPSpanExporter
from .sampling import SamplingTracerProvider, build_sampler

__all__ = ["Telemetry", "build_exporter", "build_resource", "build_sampler", "setup_telemetry"]

_log = logging.getLogger(__name__)

_COMPRESSION = {
    "none": Compression.NoCompression,
    "gzip": Compression.Gzip,
    "deflate": Compression.Deflate,
}


def build_resource(settings: TelemetrySettings) -> Resource:
    """The SDK's own attributes, then ``OTEL_RESOURCE_ATTRIBUTES``, then the service identity."""
    sdk = Resource.create({})  # telemetry.sdk.* (and whatever the process environment adds)
    return sdk.merge(Resource(dict(settings.resource_attributes))).merge(
        Resource(
            {
                "service.name": settings.service_name,
                "service.version": settings.service_version,
                "service.instance.id": settings.instance_id,
            }
        )
    )


def build_exporter(
    settings: TelemetrySettings, *, session: requests.Session | None = None
) -> FastOTLPSpanExporter | None:
    """The OTLP/HTTP span exporter for ``settings``, or None when tracing is not exported.

    ``session`` is the ``requests`` session it sends with (None: the SDK's choice). It is the
    SDK's exporter but for the encoding (``FastOTLPSpanExporter``): the same requests, made
    with a fraction of the CPU.
    """
    if not settings.exporting or settings.traces_endpoint is None:
        return None
    return FastOTLPSpanExporter(
        endpoint=settings.traces_endpoint,
        headers=dict(settings.headers),
        timeout=settings.timeout,
        compression=_COMPRESSION[settings.compression],
        session=session,
    )


class _BoundedExporter(SpanExporter):
    """Delegates to the real exporter; ``abort()`` cuts its retries short, once, quietly.

    The OTLP exporter retries a failed export with backoff for up to its timeout, and
    ``force_flush`` does not bound that; a service stopping while the collector is down
    would hang in shutdown. ``Telemetry.shutdown`` aborts the exporter when its own timeout
    runs out, and later batches are dropped without a log line each.

    Each export's result goes to ``health``, which logs when batches start being dropped
    and when they are delivered again; results after ``abort()`` are not the collector's.
    """

    def __init__(self, inner: SpanExporter, health: ExportHealth) -> None:
        self.inner = inner
        self.health = health
        self._aborted = threading.Event()
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._aborted.is_set():
            return SpanExportResult.FAILURE
        result = self.inner.export(spans)
        if not self._aborted.is_set():
            self.health.observe(result, len(spans))
        return result

    def abort(self) -> None:
        with self._lock:
            if self._aborted.is_set():
                return
            self._aborted.set()
        self.inner.shutdown()

    def shutdown(self) -> None:
        self.abort()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@attrs.define
class Telemetry:
    """What ``setup_telemetry`` built: the provider to hand to instrumentations, and shutdown."""

    settings: TelemetrySettings
    tracer_provider: trace.TracerProvider
    exporter: SpanExporter | None = None
    #: Whether this telemetry holds the shared throttle on the SDK's export loggers.
    _throttles_sdk_logs: bool = attrs.field(default=False, alias="throttles_sdk_logs")
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def exporting(self) -> bool:
        return self.exporter is not None

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer of this provider, named for the instrumented module."""
        return self.tracer_provider.get_tracer(name, self.settings.service_version)

    def force_flush(self, timeout: float = 10.0) -> bool:
        """Export what is buffered now; False if it did not finish within ``timeout``."""
        if isinstance(self.tracer_provider, TracerProvider):
            return self.tracer_provider.force_flush(int(timeout * 1000))
        return True

    @property
    def export_health(self) -> ExportHealth | None:
        """Whether batches reach the collector now and what was dropped; None if not exporting."""
        return self.exporter.health if isinstance(self.exporter, _BoundedExporter) else None

    @property
    def endpoint_for_log(self) -> str:
        """Where spans go, fit for a startup log line (see ``TelemetrySettings``)."""
        return self.settings.endpoint_for_log

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush buffered spans and stop exporting; idempotent.

        Blocking (the exporter is synchronous HTTP): from async code use ``aclose()``. If the
        collector does not take the spans within ``timeout`` seconds (plus at most one
        request in flight), they are dropped with one warning rather than delaying the stop.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._shutdown_provider(timeout)
        finally:
            if self._throttles_sdk_logs:
                release_sdk_throttle()

    def _shutdown_provider(self, timeout: float) -> None:
        if not isinstance(self.tracer_provider, TracerProvider):
            return
        timer: threading.Timer | None = None
        if isinstance(self.exporter, _BoundedExporter):
            bounded = self.exporter

            def give_up() -> None:
                _log.warning("telemetry: collector did not take spans in %.1fs; dropped", timeout)
                bounded.abort()

            timer = threading.Timer(timeout, give_up)
            timer.daemon = True
            timer.start()
        try:
            self.tracer_provider.shutdown()  # the batch processor exports what it holds
        finally:
            if timer is not None:
                timer.cancel()

    async def aclose(self, timeout: float = 5.0) -> None:
        """``shutdown()`` in a thread, so the event loop keeps serving while spans flush."""
        await asyncio.to_thread(self.shutdown, timeout)


def setup_telemetry(
    settings: TelemetrySettings,
    *,
    set_global: bool = True,
    exporter: SpanExporter | None = None,
) -> Telemetry:
    """Build the tracer provider ``settings`` describe; install it globally unless told not to.

    ``exporter`` replaces the OTLP exporter (tests pass an in-memory one); it is used even when
    no endpoint is configured. OpenTelemetry allows one global provider per process: a later
    call leaves the first one global (quietly), so always hand ``telemetry.tracer_provider``
    on explicitly (``TracingBroker``, ``instrument_app``).
    """
    _warn_about_legacy_jaeger_port(settings)
    provider: trace.TracerProvider
    if settings.disabled:
        provider = trace.NoOpTracerProvider()
        exporter = None
    elif exporter is None and not settings.exporting:
        provider = ContextOnlyTracerProvider(settings.sampler, settings.sampler_arg)
    else:
        sdk_provider = SamplingTracerProvider(
            settings.sampler, settings.sampler_arg, resource=build_resource(settings)
        )
        exporter = _watched_exporter(settings, exporter)
        if exporter is not None:
            sdk_provider.add_span_processor(BatchSpanProcessor(exporter))
        provider = sdk_provider
    if set_global:
        _set_global(provider)
    return Telemetry(
        settings=settings,
        tracer_provider=provider,
        exporter=exporter,
        throttles_sdk_logs=exporter is not None,
    )


def _watched_exporter(
    settings: TelemetrySettings, exporter: SpanExporter | None
) -> _BoundedExporter | None:
    """``exporter`` (or the OTLP one ``settings`` describe), bounded and health-watched.

    Installs the SDK log throttle (shared; ``Telemetry.shutdown`` releases it).
    """
    session = None
    if exporter is None:
        session = problem_noting_session()
        exporter = build_exporter(settings, session=session)
        if exporter is None:
            return None
        endpoint = redact_url(settings.traces_endpoint or "")
    else:
        endpoint = type(exporter).__name__
    health = ExportHealth(endpoint, session=session, throttle=acquire_sdk_throttle())
    return _BoundedExporter(exporter, health)


def _set_global(provider: trace.TracerProvider) -> None:
    # OpenTelemetry accepts one global provider per process and logs a warning on every
    # later attempt; a process that sets up twice (tests running a service in-process)
    # keeps the first. Everything here takes an explicit provider, so nothing is lost.
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    else:
        _log.debug("telemetry: a global tracer provider is set already; keeping it")


#: Jaeger's own (non-OTLP) ports, a likely leftover in an old ``JAEGER_URI``.
_LEGACY_JAEGER_PORTS = {
    5775: "the agent's zipkin.thrift UDP port",
    6831: "the agent's Thrift UDP port",
    6832: "the agent's Thrift UDP port",
    14250: "the collector's gRPC model.proto port",
    14268: "the collector's Thrift HTTP port",
    16686: "the query UI port",
    4317: "the OTLP/gRPC port (this exporter speaks OTLP/HTTP)",
}


def _warn_about_legacy_jaeger_port(settings: TelemetrySettings) -> None:
    if settings.endpoint_source != "JAEGER_URI" or settings.traces_endpoint is None:
        return
    port = urlsplit(settings.traces_endpoint).port
    if port in _LEGACY_JAEGER_PORTS:
        _log.warning(
            "JAEGER_URI port %d is Jaeger's %s; spans go over OTLP/HTTP, usually port 4318",
            port,
            _LEGACY_JAEGER_PORTS[port],
        )
