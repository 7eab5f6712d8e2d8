"""A Broker wrapper that traces every message across the broker; adapters stay tracing-free.

``TracingBroker(broker)`` satisfies the ``Broker`` protocol itself, so services wrap whatever
adapter they built and use the result everywhere:

- ``publish`` runs in a ``send <stream>`` PRODUCER span and writes that span's context into
  the message headers (W3C ``traceparent``/``tracestate``/``baggage``).
- ``consume`` (and ``reclaim``) yield ``TracedDelivery`` objects. Each has a
  ``process <stream>`` CONSUMER span, child of the producer's context *and* linked to it,
  started when the delivery is handed out and ended when it is settled (``ack``, ``nack``,
  ``dead_letter``; a dead letter sets error status with the reason).

The consume loop does not make the span current, because one loop hands out many deliveries.
The worker does so while it processes one, so the provider-call spans and the
``send <results stream>`` spans it causes become children of ``process``::

    broker = TracingBroker(RedisStreamsBroker.from_url(url), tracer_provider=provider)
    async for delivery in broker.consume(stream, group, consumer):
        with delivery.activate():          # or: with process_context(delivery):
            answer = await provider.complete(...)            # child spans
            await broker.publish(results_stream, result)     # "send ..." child span
        await delivery.ack()                                 # ends "process ..."

``activate()`` records an exception that escapes the block on the span (error status) and
re-raises it; cancellation is noted as an event, not as an error. It may be entered more than
once (e.g. once per phase). Code typed against the plain ``Delivery`` protocol can use
``process_context(delivery)``, which activates a traced delivery and does nothing for others.
Tasks created inside the block (``asyncio.create_task``) inherit the context.

A traced delivery never settled by the time ``TracingBroker.close()`` runs has its span ended
then, marked ``orchestrator.delivery.settlement = "abandoned"``.

Presence (``announce``, ``withdraw``, ``members``) passes through untraced: it is heartbeat
traffic, not messages. So do the dead-letter operations (``dead_letters``,
``remove_dead_letter``, ``purge_dead_letters``) and the queue reads (``pending_count``,
``backlog``, ``queue_depths``, ``waiting_keys``): operator tools, not message traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from orchestrator_broker import Broker, ConsumeOptions, DeadLetter, Delivery, Message, Priority

from .config import package_version
from .context_only import ContextOnlyTracer
from .propagation import (
    current_span_context,
    extract_context,
    inject_message,
    inject_span_context,
)

#: Our own attributes (no semantic convention covers settlement yet).
SETTLEMENT = "orchestrator.delivery.settlement"
NACK_DELAY = "orchestrator.delivery.nack_delay"
DEAD_LETTER_REASON = "orchestrator.delivery.dead_letter_reason"

_TRACER_NAME = "orchestrator_telemetry"


def delivery_count_attribute(system: str) -> str:
    """The delivery-count attribute, named like semconv's ``messaging.servicebus.*`` one."""
    return f"messaging.{system}.message.delivery_count"


def entry_id_attribute(system: str) -> str:
    """The broker's entry id attribute (a Redis stream id such as ``1700000000000-0``)."""
    return f"messaging.{system}.message.entry_id"


class TracedDelivery:
    """A ``Delivery`` with its ``process <stream>`` span; settle it to end the span."""

    def __init__(
        self,
        delivery: Delivery,
        span: Span,
        context: Context,
        on_end: Callable[[TracedDelivery], None],
    ) -> None:
        self._delivery = delivery
        self._span = span
        self._context = context
        self._on_end = on_end
        self._ended = False

    # -- the Delivery protocol ------------------------------------------------------------
    @property
    def message(self) -> Message:
        return self._delivery.message

    @property
    def stream(self) -> str:
        return self._delivery.stream

    @property
    def group(self) -> str:
        return self._delivery.group

    @property
    def entry_id(self) -> str:
        return self._delivery.entry_id

    @property
    def delivery_count(self) -> int:
        return self._delivery.delivery_count

    @property
    def settled(self) -> bool:
        return self._delivery.settled

    async def ack(self) -> None:
        await self._settle(self._delivery.ack(), {SETTLEMENT: "ack"})

    async def nack(self, delay: float = 0.0) -> None:
        await self._settle(self._delivery.nack(delay), {SETTLEMENT: "nack", NACK_DELAY: delay})

    async def defer(self, delay: float) -> None:
        await self._settle(self._delivery.defer(delay), {SETTLEMENT: "defer", NACK_DELAY: delay})

    async def dead_letter(self, reason: str) -> None:
        await self._settle(
            self._delivery.dead_letter(reason),
            {SETTLEMENT: "dead_letter", DEAD_LETTER_REASON: reason},
            error=f"dead-lettered: {reason}",
        )

    async def extend_lease(self) -> None:
        try:
            await self._delivery.extend_lease()
        except Exception as exc:
            if not self._ended:
                self._span.add_event("lease extension failed", {"exception.type": _name(exc)})
            raise

    # -- tracing ----------------------------------------------------------------------------
    @property
    def inner(self) -> Delivery:
        """The adapter's own delivery."""
        return self._delivery

    @property
    def span(self) -> Span:
        """The ``process <stream>`` span (ended once the delivery is settled)."""
        return self._span

    @property
    def context(self) -> Context:
        """The producer's context (with its baggage) with the ``process`` span set in it."""
        return self._context

    def activate(self) -> contextlib.AbstractContextManager[Span]:
        """Make the ``process`` span current for the block; exceptions are recorded on it."""
        return _Activation(self)

    def end(self, settlement: str = "abandoned") -> None:
        """End the span now without settling (idempotent); settling calls this itself."""
        if self._ended:
            return
        self._ended = True
        self._span.set_attribute(SETTLEMENT, settlement)
        self._span.end()
        self._on_end(self)

    async def _settle(
        self,
        operation: Awaitable[None],
        attributes: dict[str, str | float],
        error: str | None = None,
    ) -> None:
        try:
            await operation
        except Exception as exc:
            if not self._ended:
                self._span.record_exception(exc)
                self._span.set_status(
                    Status(StatusCode.ERROR, f"{attributes[SETTLEMENT]} failed: {_name(exc)}")
                )
                self.end(f"{attributes[SETTLEMENT]} failed")
            raise
        if self._ended:
            return
        self._span.set_attributes(attributes)
        if error is not None:
            self._span.set_status(Status(StatusCode.ERROR, error))
        self.end(str(attributes[SETTLEMENT]))

    def __repr__(self) -> str:
        return f"TracedDelivery({self._delivery!r})"


class _Activation:
    """``TracedDelivery.activate()``: a class, not a generator, as it runs for every task."""

    __slots__ = ("_delivery", "_token")

    def __init__(self, delivery: TracedDelivery) -> None:
        self._delivery = delivery

    def __enter__(self) -> Span:
        delivery = self._delivery
        self._token = context_api.attach(delivery._context)
        return delivery._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            delivery = self._delivery
            if exc is None or delivery._ended:
                return
            if isinstance(exc, asyncio.CancelledError):
                delivery._span.add_event("cancelled")
            elif isinstance(exc, Exception):
                delivery._span.record_exception(exc)
                delivery._span.set_status(Status(StatusCode.ERROR, f"{_name(exc)}: {exc}"))
        finally:
            context_api.detach(self._token)


def process_context(delivery: Delivery) -> contextlib.AbstractContextManager[object]:
    """``delivery.activate()`` for a traced delivery; a no-op context for any other."""
    if isinstance(delivery, TracedDelivery):
        return delivery.activate()
    return contextlib.nullcontext()


def _name(exc: BaseException) -> str:
    return type(exc).__qualname__


class TracingBroker:
    """Wraps any ``Broker`` adapter; itself a ``Broker`` whose messages carry trace context.

    ``system`` is the ``messaging.system`` attribute (``"redis"`` for Redis Streams).
    ``tracer_provider`` defaults to the global one (as ``setup_telemetry`` sets it).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        system: str = "redis",
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._broker = broker
        self._system = system
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(_TRACER_NAME, package_version())
        # Tracing off: spans are never recorded, so skip building them (ids still travel).
        self._ids_only = self._tracer if isinstance(self._tracer, ContextOnlyTracer) else None
        self._open: set[TracedDelivery] = set()
        self._delivery_count_key = delivery_count_attribute(system)
        self._entry_id_key = entry_id_attribute(system)

    @property
    def inner(self) -> Broker:
        """The wrapped adapter."""
        return self._broker

    @property
    def system(self) -> str:
        return self._system

    async def publish(
        self,
        stream: str,
        message: Message,
        *,
        key: str | None = None,
        priority: Priority = "normal",
    ) -> str:
        """Publish in a ``send <stream>`` PRODUCER span whose context the headers carry
        (``key`` and ``priority`` pass through: see ``Broker.publish``)."""
        ids_only = self._ids_only
        if ids_only is not None:
            # The span would record nothing: only its context (a fresh span id in the current
            # trace, or a new trace) goes into the headers, as W3C asks.
            current = context_api.get_current()
            headers = inject_span_context(message.headers, ids_only.span_context(current), current)
            return await self._broker.publish(
                stream, message.replace_headers(headers), key=key, priority=priority
            )
        with self._tracer.start_as_current_span(f"send {stream}", kind=SpanKind.PRODUCER) as span:
            # Attributes only if the span records: the configurable samplers (the built-in
            # ones) never read them, so setting them after the start is equivalent.
            recording = span.is_recording()
            if recording:
                span.set_attributes(
                    {
                        "messaging.system": self._system,
                        "messaging.destination.name": stream,
                        "messaging.operation.type": "send",
                        "messaging.operation.name": "send",
                        "messaging.message.id": message.id,
                    }
                )
            entry_id = await self._broker.publish(
                stream, inject_message(message), key=key, priority=priority
            )
            if recording:
                span.set_attribute(self._entry_id_key, entry_id)
            return entry_id

    async def ensure_group(self, stream: str, group: str) -> None:
        await self._broker.ensure_group(stream, group)

    async def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        options: ConsumeOptions | None = None,
    ) -> AsyncGenerator[TracedDelivery, None]:
        """The adapter's deliveries, each wrapped in a ``TracedDelivery`` with its span."""
        deliveries = self._broker.consume(stream, group, consumer, options)
        try:
            async for delivery in deliveries:
                yield self.trace_delivery(delivery, consumer=consumer)
        finally:
            await deliveries.aclose()

    async def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle: float, count: int = 100
    ) -> list[Delivery]:
        claimed = await self._broker.reclaim(
            stream, group, consumer, min_idle=min_idle, count=count
        )
        return [self.trace_delivery(delivery, consumer=consumer) for delivery in claimed]

    def trace_delivery(self, delivery: Delivery, *, consumer: str | None = None) -> TracedDelivery:
        """Start the ``process`` span for ``delivery`` (what ``consume`` does for each)."""
        parent = extract_context(delivery.message.headers)
        ids_only = self._ids_only
        if ids_only is not None:
            span: Span = trace.NonRecordingSpan(ids_only.span_context(parent))
        else:
            span = self._process_span(delivery, parent, consumer)
        traced = TracedDelivery(
            delivery, span, trace.set_span_in_context(span, parent), self._open.discard
        )
        self._open.add(traced)
        return traced

    def _process_span(self, delivery: Delivery, parent: Context, consumer: str | None) -> Span:
        span = self._tracer.start_span(
            f"process {delivery.stream}", context=parent, kind=SpanKind.CONSUMER
        )
        if not span.is_recording():
            return span
        # Attributes and the link only for a span that records. The configurable samplers
        # (the built-in ones) read neither, so adding them after the start is equivalent.
        attributes: dict[str, str | int] = {
            "messaging.system": self._system,
            "messaging.destination.name": delivery.stream,
            "messaging.consumer.group.name": delivery.group,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": delivery.message.id,
            self._delivery_count_key: delivery.delivery_count,
            self._entry_id_key: delivery.entry_id,
        }
        if consumer is not None:
            attributes["messaging.client.id"] = consumer
        span.set_attributes(attributes)
        remote = current_span_context(parent)
        if remote.is_valid:
            span.add_link(remote)
        return span

    async def pending_count(self, stream: str, group: str) -> int:
        return await self._broker.pending_count(stream, group)

    async def backlog(self, stream: str, group: str) -> int:
        return await self._broker.backlog(stream, group)

    async def queue_depths(self, stream: str, group: str) -> dict[str, int]:
        return await self._broker.queue_depths(stream, group)

    async def waiting_keys(self, stream: str, top: int = 10) -> dict[str, int]:
        return await self._broker.waiting_keys(stream, top)

    async def dead_letters(
        self, stream: str, count: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        return await self._broker.dead_letters(stream, count, after)

    async def remove_dead_letter(self, stream: str, entry_id: str) -> bool:
        return await self._broker.remove_dead_letter(stream, entry_id)

    async def purge_dead_letters(self, stream: str, older_than: float | None = None) -> int:
        return await self._broker.purge_dead_letters(stream, older_than)

    async def announce(
        self, group: str, member: str, payload: Mapping[str, Any], ttl: float
    ) -> None:
        await self._broker.announce(group, member, payload, ttl)

    async def withdraw(self, group: str, member: str) -> None:
        await self._broker.withdraw(group, member)

    async def members(self, group: str) -> dict[str, dict[str, Any]]:
        return await self._broker.members(group)

    async def raise_flag(self, group: str, name: str, ttl: float) -> None:
        await self._broker.raise_flag(group, name, ttl)

    async def raised_flags(self, group: str, names: Collection[str]) -> set[str]:
        return await self._broker.raised_flags(group, names)

    def watch_flags(self, group: str) -> AsyncGenerator[str, None]:
        return self._broker.watch_flags(group)

    async def ping(self) -> None:
        await self._broker.ping()

    async def close(self) -> None:
        """Close the adapter and end the spans of deliveries nobody settled."""
        try:
            await self._broker.close()
        finally:
            for traced in list(self._open):
                traced.end("abandoned")
