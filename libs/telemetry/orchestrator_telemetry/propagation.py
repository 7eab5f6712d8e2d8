"""W3C trace context in message headers: inject on publish, extract on consume.

The headers are ``traceparent``, ``tracestate`` and ``baggage`` (W3C Trace Context and
Baggage), always these two propagators whatever ``OTEL_PROPAGATORS`` says, because the
headers are a wire contract between services. The extractor accepts carriers with ``bytes``
keys or values too: redis-py returns bytes unless ``decode_responses`` is on, and a plain
dict getter would then find nothing and silently start a new trace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeAlias, cast

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.baggage import _BAGGAGE_KEY
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from orchestrator_broker import Message

#: A header carrier as found in the wild: str or bytes on either side.
Carrier: TypeAlias = (
    Mapping[str, str | bytes] | Mapping[bytes, str | bytes] | Mapping[str | bytes, str | bytes]
)

_BAGGAGE = W3CBaggagePropagator()

#: The propagator for message headers.
PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), _BAGGAGE])

#: The header names the propagator writes.
TRACE_HEADERS = frozenset(PROPAGATOR.fields)


def _text(value: str | bytes) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value


class HeadersGetter(Getter[Carrier]):
    """Reads a header from a str- or bytes-keyed mapping; names match case-insensitively."""

    def get(self, carrier: Carrier, key: str) -> list[str] | None:
        mapping: Mapping[str | bytes, str | bytes] = carrier  # type: ignore[assignment]
        for candidate in (key, key.encode()):
            if candidate in mapping:
                text = _text(mapping[candidate])
                return None if text is None else [text]
        lowered = key.lower()
        for name, value in mapping.items():
            if (_text(name) or "").lower() == lowered:
                text = _text(value)
                return None if text is None else [text]
        return None

    def keys(self, carrier: Carrier) -> list[str]:
        return [text for name in carrier if (text := _text(name)) is not None]


def current_span_context(context: Context | None = None) -> trace.SpanContext:
    """``trace.get_current_span(context).get_span_context()``, minus its ``isinstance`` check
    against the ``Span`` ABC (slow; and only spans are ever stored under the span key).
    Called several times per request and per message."""
    span = cast(
        "trace.Span | None",
        (context_api.get_current() if context is None else context).get(_SPAN_KEY),
    )
    return trace.INVALID_SPAN_CONTEXT if span is None else span.get_span_context()


def traceparent(span_context: trace.SpanContext) -> str:
    """The W3C ``traceparent`` value for ``span_context`` (version 00)."""
    # SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, ...).
    return f"00-{span_context[0]:032x}-{span_context[1]:016x}-{span_context[3]:02x}"


def inject_span_context(
    headers: Mapping[str, str] | None,
    span_context: trace.SpanContext,
    context: Context | None = None,
) -> dict[str, str]:
    """``headers`` plus ``traceparent``/``tracestate`` of ``span_context`` and the baggage of
    ``context`` (default: the current one): what ``PROPAGATOR`` writes, without a span.

    An unsampled context is written too (flags ``00``): the trace id still travels. An invalid
    one writes no ``traceparent``. Stale trace headers in ``headers`` are dropped first.
    """
    carrier: dict[str, str] = {}
    if headers:
        carrier = {k: v for k, v in headers.items() if k.lower() not in TRACE_HEADERS}
    if span_context.is_valid:
        carrier["traceparent"] = traceparent(span_context)
        if span_context.trace_state:
            carrier["tracestate"] = span_context.trace_state.to_header()
    if (context_api.get_current() if context is None else context).get(_BAGGAGE_KEY):
        _BAGGAGE.inject(carrier, context=context)
    return carrier


def inject_headers(
    headers: Mapping[str, str] | None = None, *, context: Context | None = None
) -> dict[str, str]:
    """``headers`` plus the trace headers of ``context`` (default: the current context).

    Stale trace headers in ``headers`` are dropped first, so a republished message never
    carries its previous hop's parent.
    """
    return inject_span_context(headers, current_span_context(context), context)


def inject_message(message: Message, *, context: Context | None = None) -> Message:
    """A copy of ``message`` whose headers carry ``context`` (default: the current one)."""
    return message.replace_headers(inject_headers(message.headers, context=context))


def extract_context(carrier: Carrier, *, context: Context | None = None) -> Context:
    """The trace context (and baggage) carried by ``carrier``, on top of ``context``.

    Without valid trace headers this is ``context`` (default: an empty context) unchanged,
    so spans started from it become roots of new traces.
    """
    base = context or Context()
    headers = _trace_headers(carrier)
    if not headers:
        return base  # no trace headers: nothing for the propagators to do
    if len(headers) == 1 and (parent := _plain_traceparent(headers.get("traceparent"))):
        return trace.set_span_in_context(trace.NonRecordingSpan(parent), base)
    return PROPAGATOR.extract(headers, context=base)


#: The traceparent this library writes (version 00, lowercase, nothing after the flags).
_PLAIN_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _plain_traceparent(value: str | None) -> trace.SpanContext | None:
    """The remote span context of a plain version-00 ``traceparent`` (what every hop of ours
    sends), as ``TraceContextTextMapPropagator`` would extract it, at a third of its cost;
    None for anything else (the propagator then decides)."""
    if value is None or (match := _PLAIN_TRACEPARENT.fullmatch(value)) is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(int(match[3], 16)))


def _trace_headers(carrier: Carrier) -> dict[str, str]:
    """The trace headers in ``carrier``, chosen as ``HeadersGetter`` chooses them (exact str
    name, else exact bytes name, else the first case-insensitive match; an undecodable value
    counts as absent), in one pass instead of a scan per header the propagators ask for."""
    chosen: dict[str, tuple[int, str | bytes]] = {}
    for name, value in carrier.items():
        if type(name) is str:
            text: str | None = name
            rank = 0
        else:
            text = _text(name)
            rank = 1
        if text is None:
            continue
        lowered = text.lower()
        if lowered not in TRACE_HEADERS:
            continue
        if text != lowered:
            rank = 2
        best = chosen.get(lowered)
        if best is None or rank < best[0]:
            chosen[lowered] = (rank, value)
    headers: dict[str, str] = {}
    for name, (_, value) in chosen.items():
        text = _text(value)
        if text is not None:
            headers[name] = text
    return headers


def remote_span_context(carrier: Carrier) -> trace.SpanContext | None:
    """The producer's span context carried by ``carrier``, or None if there is no valid one."""
    span_context = trace.get_current_span(extract_context(carrier)).get_span_context()
    return span_context if span_context.is_valid else None


def current_trace_id(context: Context | None = None) -> str | None:
    """The current trace id as 32 hex digits (for responses and logs), or None."""
    span_context = current_span_context(context)
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


def current_span_id(context: Context | None = None) -> str | None:
    """The current span id as 16 hex digits, or None."""
    span_context = current_span_context(context)
    return trace.format_span_id(span_context.span_id) if span_context.is_valid else None
