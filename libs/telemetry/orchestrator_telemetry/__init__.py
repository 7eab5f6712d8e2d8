"""Telemetry for the orchestrator: traces that cross the broker, and logs that name them.

A service calls, once at startup::

    settings = TelemetrySettings.from_env(os.environ, default_service_name="orchestrator-api")
    telemetry = setup_telemetry(settings)
    LoggingSettings.from_env(os.environ).apply()        # or setup_logging("INFO", "json")
    log.info("traces: %s", settings.endpoint_for_log)
    broker = TracingBroker(adapter, tracer_provider=telemetry.tracer_provider)
    instrument_app(app, telemetry.tracer_provider)      # aiohttp server
    ...
    await telemetry.aclose()                            # flush at shutdown

See ``tracing_broker`` for how a worker makes a delivery's ``process`` span current.
Metrics: ``metrics`` (bounded families on prometheus_client), ``queue_metrics`` (the
scrape-time queue gauges) and ``metrics_http`` (``GET /metrics``).
"""

from .config import TelemetrySettings, jaeger_uri_endpoint
from .context_only import ContextOnlyTracerProvider, is_context_only
from .errors import TelemetryConfigError, TelemetryError
from .instrumentation import instrument_app, server_middleware
from .logs import JsonFormatter, LoggingSettings, TraceContextFilter, setup_logging
from .propagation import (
    current_span_context,
    current_span_id,
    current_trace_id,
    extract_context,
    inject_headers,
    inject_message,
    inject_span_context,
    remote_span_context,
)
from .setup import Telemetry, setup_telemetry
from .tracing_broker import TracedDelivery, TracingBroker, process_context

__all__ = [
    "ContextOnlyTracerProvider",
    "JsonFormatter",
    "LoggingSettings",
    "Telemetry",
    "TelemetryConfigError",
    "TelemetryError",
    "TelemetrySettings",
    "TraceContextFilter",
    "TracedDelivery",
    "TracingBroker",
    "current_span_context",
    "current_span_id",
    "current_trace_id",
    "extract_context",
    "inject_headers",
    "inject_message",
    "inject_span_context",
    "instrument_app",
    "is_context_only",
    "jaeger_uri_endpoint",
    "process_context",
    "remote_span_context",
    "server_middleware",
    "setup_logging",
    "setup_telemetry",
]
