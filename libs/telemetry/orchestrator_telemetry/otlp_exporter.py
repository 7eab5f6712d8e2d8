"""The OTLP/HTTP span exporter, serializing with ``otlp_encoding`` rather than the SDK's encoder.

Everything else is the SDK's ``OTLPSpanExporter``: endpoint, headers, timeout, compression,
the ``requests`` session, retries with backoff, size limit, its own metrics, its log lines.

``export`` is the SDK's, step for step, reading the SDK exporter's fields (``_shutdown``,
``_metrics``, ``_client``, ``_max_request_size``) and a private helper.
``sdk_export_problem`` checks at import that the SDK's ``export`` still reads exactly those
names, and each exporter checks its fields when built; if anything differs, ``export`` is
the SDK's own (with the SDK's encoder: slower, the same requests), logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as sdk_encode_spans,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

from .otlp_encoding import SpanEncodingError, encode_spans

try:  # the SDK exporter's private helpers; sdk_export_problem() says if they are usable
    from opentelemetry.exporter.otlp.proto.http._common import (
        RequestPayloadTooLargeError,
        _is_request_too_large,
    )

    _IMPORT_PROBLEM: str | None = None
except ImportError as exc:  # pragma: no cover - only with another SDK
    _IMPORT_PROBLEM = f"cannot import {exc.name}"

__all__ = ["FastOTLPSpanExporter", "sdk_export_problem"]

_log = logging.getLogger(__name__)

#: The global and attribute names the SDK's ``export`` uses, as our copy of it does
#: (opentelemetry-exporter-otlp-proto-http 1.45.1).
_SDK_EXPORT_NAMES = frozenset(
    {
        "_shutdown",
        "_metrics",
        "export_operation",
        "encode_spans",
        "SerializePartialToString",
        "_is_request_too_large",
        "_max_request_size",
        "RequestPayloadTooLargeError",
        "_client",
        "export",
        "success",
        "error",
        "error_attrs",
        "status_code",
        "HTTP_RESPONSE_STATUS_CODE",
        "SpanExportResult",
        "FAILURE",
        "SUCCESS",
        "len",
        "_logger",
        "warning",
    }
)


def sdk_export_problem(export: object = OTLPSpanExporter.export) -> str | None:
    """Why our copy of the SDK's ``export`` may no longer match it, or None."""
    if _IMPORT_PROBLEM is not None:
        return _IMPORT_PROBLEM
    code = getattr(export, "__code__", None)
    if code is None:
        return "OTLPSpanExporter.export is not a plain function"
    names = set(code.co_names)
    if names - _SDK_EXPORT_NAMES - {"Exception"}:
        return f"OTLPSpanExporter.export also uses {sorted(names - _SDK_EXPORT_NAMES)}"
    if not {"_client", "_metrics", "_is_request_too_large", "encode_spans"} <= names:
        return "OTLPSpanExporter.export no longer uses the fields we copy"
    return None


_PROBLEM = sdk_export_problem()
_logged_fallback = False

#: The SDK exporter's own logger: its lines keep their name, and the throttle on it
#: (``log_throttle.SDK_EXPORT_LOGGERS``) applies to them as before.
_sdk_log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")


class FastOTLPSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` that encodes a batch in a fraction of the CPU time, to the same bytes.

    ``export`` does what the SDK's does (opentelemetry-exporter-otlp-proto-http 1.45.1), step
    for step, but encodes with ``otlp_encoding.encode_spans``. A batch that encoder refuses
    (an attribute the SDK would drop, see ``otlp_encoding``) goes through the SDK's encoder
    instead of being lost; that is logged once, at DEBUG.
    """

    _fell_back = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        problem = _PROBLEM or self._fields_problem()
        #: Whether ``export`` is our copy of the SDK's (else the SDK's own).
        self.fast = problem is None
        if problem is not None:
            global _logged_fallback
            if not _logged_fallback:
                _logged_fallback = True
                _log.info(
                    "telemetry: spans are exported by the SDK's own exporter (its internals "
                    "changed: %s); slower, the same requests",
                    problem,
                )

    def _fields_problem(self) -> str | None:
        if not isinstance(getattr(self, "_shutdown", None), bool):
            return "the exporter has no _shutdown flag"
        if not callable(getattr(getattr(self, "_metrics", None), "export_operation", None)):
            return "the exporter has no _metrics.export_operation"
        if not callable(getattr(getattr(self, "_client", None), "export", None)):
            return "the exporter has no _client.export"
        if not isinstance(getattr(self, "_max_request_size", None), int | None):
            return "the exporter has no _max_request_size"
        return None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.fast:
            return super().export(spans)
        if self._shutdown:
            _sdk_log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE

        with self._metrics.export_operation(len(spans)) as result:
            try:
                serialized_data = self.encode(spans)
            except Exception as error:
                _sdk_log.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE

            if _is_request_too_large(serialized_data, self._max_request_size):
                _sdk_log.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size "
                    "%d bytes.",
                    len(serialized_data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(serialized_data)} "
                    f"bytes exceeds max_request_size "
                    f"{self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE

            export_result = self._client.export(serialized_data)
            if not export_result.success:
                result.error = export_result.error
                result.error_attrs = (
                    {HTTP_RESPONSE_STATUS_CODE: export_result.status_code}
                    if export_result.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The request body for ``spans``: ``encode_spans``, else the SDK's encoder."""
        try:
            return encode_spans(spans)
        except SpanEncodingError as exc:
            if not self._fell_back:
                self._fell_back = True
                _log.debug(
                    "telemetry: the SDK's encoder takes a span batch ours cannot (logged once): %s",
                    exc,
                )
            data: bytes = sdk_encode_spans(spans).SerializePartialToString()
            return data
