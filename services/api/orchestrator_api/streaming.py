"""A task's events, live: Server-Sent Events and WebSocket.

Both follow the store's event log from a position (``Last-Event-ID``), send each event with
its log id, and end after the terminal event (``result``, ``error`` or ``cancelled``); one
that more events follow (a task requeued from the dead letters: ``queued`` again) is not the
end. While idle,
SSE sends a ``: keepalive`` comment and WebSocket a ping every ``heartbeat`` seconds. When the
app shuts down, ``StreamRegistry.close_all()`` (an ``on_shutdown`` hook) ends every open
stream at once, so the server drains promptly; clients reconnect with the last id they saw
and lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Iterable
from typing import Any, Final

import attrs
import orjson
from aiohttp import WSMsgType, web

from .model import TERMINAL_EVENTS, StoredEvent
from .problems import trace_headers
from .store.errors import StoreError
from .store.protocol import TaskStore

__all__ = [
    "DEFAULT_HEARTBEAT",
    "TERMINAL_EVENTS",
    "StreamRegistry",
    "follow",
    "format_sse",
    "stream_sse",
    "stream_websocket",
]

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT: Final = 15.0

#: Sent first on every SSE stream: how long an EventSource waits before reconnecting (ms).
_SSE_RETRY: Final = b"retry: 2000\n\n"
_SSE_KEEPALIVE: Final = b": keepalive\n\n"


@attrs.define
class StreamRegistry:
    """The app's open event streams, so shutdown can end them."""

    closing: asyncio.Event = attrs.field(factory=asyncio.Event)
    open: int = 0

    async def close_all(self, _app: web.Application | None = None) -> None:
        """End every open stream (after its current write); new streams end at once."""
        self.closing.set()


def format_sse(event: StoredEvent) -> bytes:
    """One SSE message: ``id``, ``event`` and the JSON ``data`` on one line."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event.id.encode(),
        event.event.encode(),
        orjson.dumps(event.data),
    )


async def follow(
    store: TaskStore,
    tenant: str,
    task_id: str,
    after: str | None,
    *,
    heartbeat: float,
    stop: Iterable[Awaitable[Any]],
    end_only: bool = False,
) -> AsyncGenerator[StoredEvent | None, None]:
    """The task's events after ``after``, then live ones, through the terminal event.

    Yields None after ``heartbeat`` idle seconds (time for a keepalive). Ends early as soon as
    any of ``stop`` completes, or when the task is gone (expired) while idle. ``end_only``
    (for a caller that wants the terminal event): wait for the end, not for each delta
    (``TaskStore.events``); the events in between still come, in batches.
    """
    stoppers = [asyncio.ensure_future(s) for s in stop]
    task = asyncio.current_task()
    assert task is not None
    # The store is read in the caller's own task (no task per batch, and the events resume
    # the reader in the loop turn after they are in): a stopper cancels the caller's task
    # while it waits there, and that one cancel is taken back here.
    interrupt = _Interrupt(task)
    for stopper in stoppers:
        stopper.add_done_callback(interrupt)
    try:
        while True:
            if interrupt.fired:
                return
            interrupt.waiting = True
            try:
                events = await store.events(tenant, task_id, after, heartbeat, end_only=end_only)
            except asyncio.CancelledError:
                if interrupt.took_back():
                    return  # stopped
                raise
            except Exception:
                if interrupt.took_back() or interrupt.fired:
                    return  # stopped, and the read failed as it was cancelled
                raise
            finally:
                interrupt.waiting = False
            if interrupt.took_back():
                return  # stopped as the read ended
            if not events:
                # Idle, or nothing left to wait for: the task expired, or it is finished and
                # the client resumed after its terminal event. A finish that raced with the
                # wait is picked up by the last look below.
                record = await store.get(tenant, task_id)
                if record is None:
                    return
                if record.status.terminal:
                    events = await store.events(tenant, task_id, after)
                    if not events:
                        return
                else:
                    yield None
                    continue
            last = events[-1]
            for event in events:
                yield event
                after = event.id
                # A terminal event followed by more is not the end: the task was requeued (a
                # dead letter replayed) and runs again.
                if event is last and event.event in TERMINAL_EVENTS:
                    return
    finally:
        for stopper in stoppers:
            stopper.remove_done_callback(interrupt)
            stopper.cancel()


class _Interrupt:
    """A stopper's callback: ends a ``follow`` by cancelling its task while it waits in the
    store (once), and by ``fired`` at its next look otherwise."""

    __slots__ = ("cancelled", "fired", "task", "waiting")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.waiting = False
        self.fired = False
        self.cancelled = False

    def __call__(self, _stopper: asyncio.Future[Any]) -> None:
        if self.fired:
            return
        self.fired = True
        if self.waiting:
            self.cancelled = True
            self.task.cancel()

    def took_back(self) -> bool:
        """Whether this stopped the read: its cancel is then withdrawn from the task (other
        cancels, the client's going away, stay and are raised)."""
        if not self.cancelled:
            return False
        self.cancelled = False
        return self.task.uncancel() == 0


def last_event_id(request: web.Request) -> str | None:
    """Where a client resumes: the ``Last-Event-ID`` header or ``last_event_id`` query."""
    value = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    return value.strip() or None if value else None


async def stream_sse(
    request: web.Request,
    store: TaskStore,
    registry: StreamRegistry,
    tenant: str,
    task_id: str,
    *,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> web.StreamResponse:
    """Serve the task's events as ``text/event-stream`` (the task must exist)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # tell reverse proxies not to buffer the stream
            **trace_headers(),
        }
    )
    await response.prepare(request)
    await response.write(_SSE_RETRY)
    registry.open += 1
    try:
        events = follow(
            store,
            tenant,
            task_id,
            last_event_id(request),
            heartbeat=heartbeat,
            stop=[registry.closing.wait()],
        )
        async with contextlib.aclosing(events):
            async for event in events:
                await response.write(_SSE_KEEPALIVE if event is None else format_sse(event))
    except ConnectionResetError:
        return response  # the client left; nothing more to send
    except StoreError:
        # The headers are sent: no problem response is possible any more. End the stream;
        # the client reconnects with Last-Event-ID once the store is back.
        log.warning("event stream of task %s ended: the store is unavailable", task_id)
    finally:
        registry.open -= 1
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def stream_websocket(
    request: web.Request,
    store: TaskStore,
    registry: StreamRegistry,
    tenant: str,
    task_id: str,
    *,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> web.WebSocketResponse:
    """Serve the task's events as JSON text frames ``{"id", "event", "data"}``."""
    ws = web.WebSocketResponse(heartbeat=heartbeat)
    ws.headers.update(trace_headers())
    await ws.prepare(request)
    reader = asyncio.ensure_future(_drain(ws))
    code: int | None = None
    registry.open += 1
    try:
        events = follow(
            store,
            tenant,
            task_id,
            last_event_id(request),
            heartbeat=heartbeat,
            stop=[registry.closing.wait(), reader],
        )
        async with contextlib.aclosing(events):
            async for event in events:
                if event is not None:  # idle: the WebSocket heartbeat pings on its own
                    await ws.send_str(_frame(event).decode())
    except ConnectionResetError:
        pass
    except StoreError:
        log.warning("websocket of task %s closed: the store is unavailable", task_id)
        code = 1011  # unexpected condition: reconnect with last_event_id later
    finally:
        registry.open -= 1
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    if code is None:
        code = 1001 if registry.closing.is_set() else 1000  # 1001: going away (shutdown)
    await ws.close(code=code)
    return ws


def _frame(event: StoredEvent) -> bytes:
    return orjson.dumps({"id": event.id, "event": event.event, "data": event.data})


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends, until it closes; keeps ping/pong flowing."""
    async for message in ws:
        if message.type is WSMsgType.ERROR:
            return
