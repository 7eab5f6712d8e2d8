"""The result events of one attempt of one task: numbered, in order, with text coalesced.

What a client sees for one attempt (``attempt`` = the task delivery's delivery count, plus
the attempts of the task before it was replayed from the dead letters), with ``seq`` 0, 1,
2... in this order:

1. ``started``, with the provider and model: the task is running. For a first attempt it is
   written just before the first delta, or once the attempt has run for about a second
   (``started_after``) without text, whichever comes first. So *a first attempt that ends
   sooner and without deltas has no* ``started`` *event*: its terminal event (seq 0) says all
   there is to say, and an instant ``echo`` task costs two broker writes (the result and the
   ack) instead of three. The API applies such a terminal event alone (the record goes from
   ``queued`` to ``succeeded``, ``started_at`` taken from the event). Model calls of several
   seconds show ``running`` within a second, or sooner with their first text.
   A *retried* attempt (``attempt`` > 1) writes ``started`` at once, as it begins: it tells
   streaming clients to drop the text of the earlier attempt before any new text arrives,
   so they never show a spliced answer;
2. zero or more ``delta`` events, each carrying the text that arrived since the previous one.
   The first one goes out as soon as the first text arrives (on the next turn of the event
   loop, so an answer that is complete at once still publishes no delta): time to first
   token is the model's, not our clock's. The later ones are written on the ticks of the
   worker's flush clock (every ``DELTA_FLUSH_MS``, ~100 ms), so a thousand concurrent streams
   cost at most ten delta events per second each, whatever their chunk rate;
3. exactly one terminal event: ``succeeded`` carrying the *whole* answer in ``text`` (plus
   usage, finish reason and cost), or ``failed`` carrying ``error``.

A task that nobody streams (``TaskMessage.deltas`` False: a non-streamed chat completion, a
batch line) publishes no deltas at all: its text waits in the worker and comes whole in
``succeeded`` (or ``cancelled``), so a call costs the API one result event to apply, not one
per flush. ``started`` still goes out after ``started_after`` for a long call.

An attempt that published at least one delta sends the text still buffered at its end as a
last delta just before ``succeeded``, so *the deltas of an attempt concatenate to exactly its
result text*. An attempt that published no delta (an answer faster than one flush interval)
sends no delta at all: ``succeeded.text`` carries the answer. Streaming clients append the
deltas of the latest attempt as they come (dropping what they hold when a ``started`` of a
newer attempt arrives) and may take ``succeeded.text`` as the final word.

A retryable failure that is retried (``nack``) publishes no terminal event for its attempt:
the next attempt's ``started`` supersedes it. Events of one attempt are published one after
another (the next ``publish`` starts when the previous returned), except the two pairs that
come together: ``started`` with the first delta, and the last delta with ``succeeded``. Each
pair is handed to the broker in one event-loop turn, in order, so the Redis adapter writes it
in one pipeline (one round trip, in ``seq`` order); were the two ever reordered, the API
orders an attempt's events by ``seq`` anyway. Each message's broker id is
``<task_id>:<attempt>:<seq>``, the event's identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from orchestrator_broker import Broker, Message
from orchestrator_tasks.messages import ErrorInfo, EventKind, Usage, event_payload


class FlushClock:
    """One timer for the pending writes of every running attempt of a worker.

    An attempt with new text marks itself dirty; the first mark arms a single timer, ticking
    every ``interval`` while anything is pending, and on each tick every dirty attempt writes
    its delta. Text thus waits at most one interval, and an attempt that ends before writing
    anything costs a set insertion, not a timer or a task of its own.

    ``started`` events fall due ``started_after`` seconds after their attempt began: as that
    delay is the same for all, they wait in a first-in-first-out queue and a tick pops only
    those due, whatever the number of long-running attempts.
    """

    def __init__(self, interval: float, started_after: float = 0.0) -> None:
        self.interval = interval
        self.started_after = started_after
        self._dirty: set[AttemptEvents] = set()
        self._due: deque[tuple[float, AttemptEvents]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def mark(self, events: AttemptEvents) -> None:
        """``events`` has text to write at the next tick."""
        self._dirty.add(events)
        self._arm()

    def unmark(self, events: AttemptEvents) -> None:
        self._dirty.discard(events)

    def expect_started(self, events: AttemptEvents) -> None:
        """``events`` began now; its ``started`` falls due ``started_after`` from now."""
        self._due.append((asyncio.get_running_loop().time() + self.started_after, events))
        self._arm()

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        dirty, self._dirty = self._dirty, set()
        for events in dirty:
            events._on_tick()
        due = self._due
        now = asyncio.get_running_loop().time()
        while due and due[0][0] <= now:
            due.popleft()[1]._on_started_due()  # ended attempts ignore it
        if due or self._dirty:
            self._arm()


class AttemptEvents:
    """Publishes the events of one attempt: ``begin()``, ``add()`` text, one terminal call.

    ``started`` and deltas are written on clock ticks, each tick's writes in a short task of
    their own (so a slow broker does not stall the model stream); if one fails, the error is
    raised from the next ``add()`` or from the terminal call.
    """

    def __init__(
        self,
        broker: Broker,
        stream: str,
        *,
        task_id: str,
        tenant: str,
        attempt: int,
        clock: FlushClock,
        provider: str | None = None,
        model: str | None = None,
        prior_attempts: int = 0,
        deltas: bool = True,
    ) -> None:
        self._broker = broker
        self._stream = stream
        self.task_id = task_id
        self.tenant = tenant
        #: The delivery count: what the retry budget counts.
        self.attempt = attempt
        #: The attempt's number as the events carry it: the attempts the task made before it
        #: was last replayed from the dead letters (``TaskMessage.prior_attempts``), plus
        #: ``attempt``.
        self.number = prior_attempts + attempt
        self.provider = provider
        self.model = model
        #: Whether text goes out in deltas as it arrives (else only in the terminal event).
        self.streams = deltas
        self._clock = clock
        self._seq = 0
        self._deltas = 0  # delta events written (or being written)
        self._parts: list[str] = []  # the whole answer so far
        self._pending: list[str] = []  # text not yet sent in a delta
        self._started_due = False  # begun, and ``started`` not written yet
        self._marked = False  # waiting in the delta clock's dirty set
        self._first_soon = False  # the first delta is scheduled for the next loop turn
        self._flushing: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._began: float | None = None  # when begin() was called (the attempt's start)
        self.terminal_published = False

    @property
    def text(self) -> str:
        """The answer text received so far."""
        return "".join(self._parts)

    @property
    def published(self) -> int:
        """How many events this attempt has published (the next event's ``seq``)."""
        return self._seq

    @property
    def deltas(self) -> int:
        """How many ``delta`` events this attempt has written (or is writing)."""
        return self._deltas

    def begin(self, *, at_once: bool = False) -> None:
        """The attempt runs (on ``provider``/``model``): ``started`` goes out before the first
        delta, or at the first tick ``clock.started_after`` seconds from now, unless a
        terminal event comes first; with ``at_once`` (a retried attempt), right away."""
        self._started_due = True
        self._began = time.time()
        if at_once and self._flushing is None and not self._closed:
            self._flushing = asyncio.get_running_loop().create_task(self._flush(with_text=False))
        else:
            self._clock.expect_started(self)

    async def started(self) -> None:
        """Publish ``started`` now."""
        self._started_due = False
        await self._publish(EventKind.STARTED)

    def add(self, chunk: str) -> None:
        """Buffer a chunk of answer text; it goes out in the next delta (without deltas: in
        the terminal event)."""
        if self._error is not None:
            raise self._error
        if not chunk:
            return
        self._parts.append(chunk)
        if self.streams:
            self._pending.append(chunk)
            self._schedule()

    def discard_text(self) -> bool:
        """Forget the answer text received so far (a fallback to another model within this
        attempt starts over); False, forgetting nothing, if some of it went out in a delta:
        only a new attempt can take published text back."""
        if self._deltas:
            return False
        # A write in flight has not taken any text yet (it counts its delta when it does).
        self._parts.clear()
        self._pending.clear()
        return True

    async def succeeded(
        self, usage: Usage | None, finish_reason: str | None, cost_usd: float | None = None
    ) -> None:
        """Publish ``succeeded`` with the whole answer (after any write still in flight, and
        after a last delta with the rest of the text if this attempt streamed deltas)."""
        await self._last_write()
        messages = []
        if self._deltas and self._pending:
            # The deltas then spell the result exactly.
            text = "".join(self._pending)
            self._pending.clear()
            self._deltas += 1
            messages.append(self._message(EventKind.DELTA, text=text))
        messages.append(
            self._message(
                EventKind.SUCCEEDED,
                text=self.text,
                usage=usage,
                finish_reason=finish_reason,
                cost_usd=cost_usd,
            )
        )
        await self._send(messages)
        self.terminal_published = True

    async def failed(self, error: ErrorInfo) -> None:
        """Publish ``failed`` with ``error`` (after any write still in flight)."""
        await self._last_write()
        await self._publish(EventKind.FAILED, error=error)
        self.terminal_published = True

    async def cancelled(self) -> None:
        """Publish ``cancelled`` with the text answered so far (after any write in flight;
        the deltas already out are a prefix of it)."""
        await self._last_write()
        await self._publish(EventKind.CANCELLED, text=self.text)
        self.terminal_published = True

    async def abandon(self) -> None:
        """End the attempt without a terminal event (it will be retried): no more clock
        writes, and the write in flight, if any, finished first, so that every event of
        this attempt is out before the task is handed back. Raises nothing."""
        in_flight = self._end_flushing()
        if in_flight is not None:
            with contextlib.suppress(Exception):
                await in_flight

    def close(self) -> None:
        """Stop publishing from the clock (on any exit path); idempotent."""
        self._closed = True
        self._unmark()
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        # The clock's started queue may hold this object up to ``started_after`` longer.
        self._parts.clear()
        self._pending.clear()

    def _schedule(self) -> None:
        """Pending text goes out with the next tick; before any delta, at the next loop turn."""
        if self._deltas or self._closed:
            self._mark()
        elif not self._first_soon and self._flushing is None:
            self._first_soon = True
            asyncio.get_running_loop().call_soon(self._first_delta)

    def _first_delta(self) -> None:
        self._first_soon = False
        if self._pending and not self._closed and self._flushing is None:
            self._unmark()
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    def _mark(self) -> None:
        if not self._marked and self._flushing is None and not self._closed:
            self._marked = True
            self._clock.mark(self)

    def _unmark(self) -> None:
        self._marked = False
        self._clock.unmark(self)

    def _on_tick(self) -> None:
        """Called by the clock for new text: write it (with ``started`` first if not out)."""
        self._marked = False
        if self._pending and not self._closed and self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        # (a write in flight re-marks when done if more text came)

    def _on_started_due(self) -> None:
        """Called by the clock ``started_after`` after ``begin()``."""
        if self._started_due and not self._closed and self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self, *, with_text: bool = True) -> None:
        """Write ``started`` if due, then (``with_text``) the text pending as a delta."""
        try:
            messages = []
            if self._started_due:  # always before the first delta
                self._started_due = False
                messages.append(self._message(EventKind.STARTED))
            if with_text and self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self._deltas += 1
                messages.append(self._message(EventKind.DELTA, text=text))
            await self._send(messages)
        except Exception as exc:
            self._error = exc
        finally:
            self._flushing = None
        # Text that came in while this was being written goes with the next tick (or at
        # once if this write was ``started`` alone).
        if self._pending and self._error is None:
            self._schedule()

    async def _last_write(self) -> None:
        """Before a terminal event: no more clock writes, the write in flight finished, and
        its error (or an earlier one) raised."""
        in_flight = self._end_flushing()
        if in_flight is not None:
            await in_flight
        if self._error is not None:
            raise self._error

    def _end_flushing(self) -> asyncio.Task[None] | None:
        """No more clock writes; the write still in flight, if any, to wait for."""
        self._closed = True
        self._unmark()
        if self._flushing is None:
            self._started_due = False  # the terminal event implies it
        # else the write in flight (perhaps not begun yet) still writes ``started`` before
        # any delta it takes
        return self._flushing

    async def _publish(self, kind: EventKind, **fields: Any) -> None:
        await self._send([self._message(kind, **fields)])

    async def _send(self, messages: list[Message]) -> None:
        """Publish ``messages``, in order; several are handed over in one loop turn (one
        pipeline), and this returns when all are written, raising the first error."""
        if len(messages) == 1:
            await self._broker.publish(self._stream, messages[0])
        elif messages:
            writes = [self._broker.publish(self._stream, message) for message in messages]
            for outcome in await asyncio.gather(*writes, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome

    def _message(
        self,
        kind: EventKind,
        *,
        text: str = "",
        usage: Usage | None = None,
        error: ErrorInfo | None = None,
        finish_reason: str | None = None,
        cost_usd: float | None = None,
    ) -> Message:
        payload = event_payload(
            task_id=self.task_id,
            tenant=self.tenant,
            kind=kind,
            attempt=self.number,
            seq=self._seq,
            at=time.time(),
            text=text,
            provider=self.provider,
            model=self.model,
            usage=usage,
            error=error,
            finish_reason=finish_reason,
            cost_usd=cost_usd,
            started_at=None if kind is EventKind.DELTA else self._began,
        )
        # The message id names the event, so a re-sent copy is recognisably the same one.
        message = Message(payload=payload, id=f"{self.task_id}:{self.number}:{self._seq}")
        # The seq is taken before the write: a failed write voids the attempt anyway.
        self._seq += 1
        return message
