"""``ContextOnlyTracer`` builds span contexts without the constructor: same values."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.span import TraceState

from orchestrator_telemetry.context_only import ContextOnlyTracer


def _rebuilt(context: SpanContext) -> SpanContext:
    return SpanContext(
        context.trace_id, context.span_id, False, context.trace_flags, context.trace_state
    )


def test_root_and_child_contexts_equal_the_constructors() -> None:
    for sampler in ("parentbased_always_on", "always_off", "traceidratio"):
        tracer = ContextOnlyTracer(sampler, 0.5)
        for _ in range(50):
            root = tracer.span_context(trace.set_span_in_context(trace.INVALID_SPAN))
            assert root == _rebuilt(root)
            assert root.is_valid
            assert not root.is_remote
            assert type(root.trace_flags) is TraceFlags
            for flags in (0, 1, 2, 3):
                parent = SpanContext(
                    root.trace_id, 7, True, TraceFlags(flags), TraceState([("k", "v")])
                )
                context = trace.set_span_in_context(NonRecordingSpan(parent))
                child = tracer.span_context(context)
                assert child == _rebuilt(child)
                assert child.is_valid
                assert child.trace_state == parent.trace_state
                assert type(child.trace_flags) is TraceFlags
