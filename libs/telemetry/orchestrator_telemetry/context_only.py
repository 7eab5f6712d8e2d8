"""A tracer provider for "tracing off": real trace ids and W3C flags, nothing recorded.

When no span goes anywhere, recording spans only to drop them cost a busy API about a third
of its CPU. ``ContextOnlyTracerProvider`` makes ``NonRecordingSpan`` s with fresh ids, so
responses still name their trace (``traceparent``, a task's ``trace_id``) and context still
crosses the broker, but it keeps no attributes, events or timings.

The span contexts are those the SDK would make with the configured sampler: a child keeps
its parent's trace id and ``tracestate``; the sampled flag is the sampler's decision
(``parentbased_*`` follows the parent, ``always_on``/``always_off``/``traceidratio`` decide
for roots as the SDK does) and the random-trace-id flag is set as the SDK sets it. So a
downstream service that does export (a worker with ``JAEGER_URI`` behind an API without it)
samples exactly as it did when this service recorded and dropped its spans.

Code that wants to skip work for spans nobody records checks ``is_context_only(tracer)``
once, or ``span.is_recording()`` per span.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager

from .propagation import current_span_context

__all__ = ["ContextOnlyTracer", "ContextOnlyTracerProvider", "is_context_only"]

_SAMPLED = TraceFlags.SAMPLED
_RANDOM = TraceFlags.RANDOM_TRACE_ID
_EMPTY_STATE = TraceState()
_getrandbits = random.getrandbits
#: The flags a new span context can have, made once (indexed by their bits).
_FLAGS = tuple(TraceFlags(bits) for bits in range(4))


def _valid_context(
    trace_id: int, span_id: int, flags: TraceFlags, state: TraceState
) -> SpanContext:
    """``SpanContext(trace_id, span_id, False, flags, state)`` for ids known to be valid
    (non-zero, in range), minus the constructor's checks: three of these per task.
    A test holds it equal to the constructor's result."""
    return tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, True))


def _root_rule(sampler: str, ratio: float | None) -> int | None:
    """For roots: always sample (-1), never (None), or sample below this trace-id bound."""
    base = sampler.removeprefix("parentbased_")
    if base == "always_on":
        return -1
    if base == "always_off":
        return None
    if base == "traceidratio":
        return TraceIdRatioBased.get_bound_for_rate(1.0 if ratio is None else ratio)
    raise ValueError(f"unknown sampler {sampler!r}")


class ContextOnlyTracer(trace.Tracer):
    """Starts non-recording spans with the ids and flags a sampling SDK tracer would give."""

    def __init__(self, sampler: str = "parentbased_always_on", ratio: float | None = None):
        self._parent_based = sampler.startswith("parentbased_")
        self._bound = _root_rule(sampler, ratio)

    def _sampled(self, trace_id: int) -> bool:
        bound = self._bound
        if bound is None:
            return False
        return bound < 0 or trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound

    @property
    def samples_every_root(self) -> bool:
        """Whether every root is sampled, whatever its trace id."""
        bound = self._bound
        return bound is not None and (bound < 0 or bound > TraceIdRatioBased.TRACE_ID_LIMIT)

    def samples_root(self, trace_id: int) -> bool:
        """The sampler's decision for a root span of trace ``trace_id``."""
        return self._sampled(trace_id)

    def samples_child(self, parent: SpanContext) -> bool:
        """The sampler's decision for a child of the valid span context ``parent``."""
        if self._parent_based:
            return bool(parent.trace_flags & _SAMPLED)
        return self._sampled(parent.trace_id)

    def span_context(self, context: Context | None = None) -> SpanContext:
        """A new span context: a child of the span in ``context`` (default: current), or a root."""
        parent = current_span_context(context)
        span_id = _getrandbits(64)
        while span_id == INVALID_SPAN_ID:  # pragma: no cover - one chance in 2**64
            span_id = _getrandbits(64)
        if parent.is_valid:
            return self.child_context(parent, span_id)
        trace_id = _getrandbits(128)
        while trace_id == INVALID_TRACE_ID:  # pragma: no cover - one chance in 2**128
            trace_id = _getrandbits(128)
        return self.root_context(trace_id, span_id)

    def child_context(self, parent: SpanContext, span_id: int) -> SpanContext:
        """The context of span ``span_id``, a child of the valid ``parent``: the parent's trace
        and ``tracestate``, the sampler's decision, the parent's random-trace-id flag."""
        trace_id = parent.trace_id
        flags = parent.trace_flags
        sampled = flags & _SAMPLED if self._parent_based else self._sampled(trace_id)
        bits = (_SAMPLED if sampled else 0) | (flags & _RANDOM)
        return _valid_context(trace_id, span_id, _FLAGS[bits], parent.trace_state)

    def root_context(self, trace_id: int, span_id: int, random_id: bool = True) -> SpanContext:
        """The context of root span ``span_id`` of trace ``trace_id`` (both valid): the
        sampler's decision, and the random-trace-id flag if the ids are random."""
        bits = (_SAMPLED if self._sampled(trace_id) else 0) | (_RANDOM if random_id else 0)
        return _valid_context(trace_id, span_id, _FLAGS[bits], _EMPTY_STATE)

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        return NonRecordingSpan(self.span_context(context))

    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = NonRecordingSpan(self.span_context(context))
        token = context_api.attach(trace.set_span_in_context(span, context))
        try:
            yield span
        finally:
            context_api.detach(token)


class ContextOnlyTracerProvider(trace.TracerProvider):
    """Hands out one ``ContextOnlyTracer`` (names and versions do not matter: nothing is kept)."""

    def __init__(self, sampler: str = "parentbased_always_on", ratio: float | None = None):
        self._tracer = ContextOnlyTracer(sampler, ratio)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace.Tracer:
        return self._tracer


def is_context_only(tracer: trace.Tracer) -> bool:
    """Whether ``tracer`` never records (only makes span contexts): skip span bookkeeping."""
    return isinstance(tracer, ContextOnlyTracer)
