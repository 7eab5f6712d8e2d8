"""One call per service: ``setup_telemetry(TelemetrySettings.from_env(os.environ))``.

It builds the tracer provider (resource, sampler, OTLP/HTTP exporter behind a
``BatchSpanProcessor``), installs it as the global provider (the aiohttp instrumentation and
``trace.get_tracer`` use that), and returns a ``Telemetry`` whose ``shutdown()`` flushes what
is still buffered. Call ``shutdown()`` (or ``await aclose()``) when the service stops.

Without an endpoint the provider still creates spans and trace ids, so context crosses the
broker and responses can name their trace, but exports nothing and logs nothing about it.
With ``OTEL_SDK_DISABLED=true`` the provider is a no-op one: no ids are made, incoming
context still passes through unchanged.
"""

from __future__ import annotations

import asyncio
import logging

import attrs
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from .config import TelemetrySettings

_log = logging.getLogger(__name__)

_COMPRESSION = {
    "none": Compression.NoCompression,
    "gzip": Compression.Gzip,
    "deflate": Compression.Deflate,
}


def build_sampler(name: str, arg: float | None) -> Sampler:
    """The SDK sampler an ``OTEL_TRACES_SAMPLER`` name (and its ratio) stands for."""
    ratio = 1.0 if arg is None else arg
    root: Sampler
    if name.endswith("always_on"):
        root = ALWAYS_ON
    elif name.endswith("always_off"):
        root = ALWAYS_OFF
    elif name.endswith("traceidratio"):
        root = TraceIdRatioBased(ratio)
    else:
        raise ValueError(f"unknown sampler {name!r}")
    return ParentBased(root) if name.startswith("parentbased_") else root


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


def build_exporter(settings: TelemetrySettings) -> OTLPSpanExporter | None:
    """The OTLP/HTTP span exporter for ``settings``, or None when tracing is not exported."""
    if not settings.exporting or settings.traces_endpoint is None:
        return None
    return OTLPSpanExporter(
        endpoint=settings.traces_endpoint,
        headers=dict(settings.headers),
        timeout=settings.timeout,
        compression=_COMPRESSION[settings.compression],
    )


@attrs.define
class Telemetry:
    """What ``setup_telemetry`` built: the provider to hand to instrumentations, and shutdown."""

    settings: TelemetrySettings
    tracer_provider: trace.TracerProvider
    exporter: SpanExporter | None = None
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

    def shutdown(self, timeout: float = 10.0) -> None:
        """Flush buffered spans (up to ``timeout`` seconds) and stop exporting; idempotent.

        Blocking (the exporter is synchronous HTTP): from async code use ``aclose()``.
        """
        if self._closed:
            return
        self._closed = True
        if isinstance(self.tracer_provider, TracerProvider):
            if not self.tracer_provider.force_flush(int(timeout * 1000)):
                _log.warning("telemetry: spans not flushed within %.1fs at shutdown", timeout)
            self.tracer_provider.shutdown()

    async def aclose(self, timeout: float = 10.0) -> None:
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
    no endpoint is configured. OpenTelemetry allows setting the global provider once per
    process, so tests pass ``set_global=False`` and hand ``telemetry.tracer_provider`` on.
    """
    provider: trace.TracerProvider
    if settings.disabled:
        provider = trace.NoOpTracerProvider()
        exporter = None
    else:
        sdk_provider = TracerProvider(
            resource=build_resource(settings),
            sampler=build_sampler(settings.sampler, settings.sampler_arg),
        )
        exporter = exporter or build_exporter(settings)
        if exporter is not None:
            sdk_provider.add_span_processor(BatchSpanProcessor(exporter))
        provider = sdk_provider
    if set_global:
        trace.set_tracer_provider(provider)
    return Telemetry(settings=settings, tracer_provider=provider, exporter=exporter)
