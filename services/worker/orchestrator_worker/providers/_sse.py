"""Server-sent events from an HTTP body, for the streaming provider APIs.

The subset of the SSE format the LLM APIs use: ``data:`` lines (several join with ``\\n``),
an optional ``event:`` line, ``:`` comments (keep-alives), a blank line ending each event.
Lines end with ``\\n`` or ``\\r\\n``. An event larger than ``max_event_bytes`` is a
``MalformedResponse`` (a runaway body must not eat the worker's memory); a partial event at
the end of the body is dropped, the caller decides whether the stream was complete.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import aiohttp
import attrs

from .errors import MalformedResponse, ProviderTimeout, StreamInterrupted

#: Largest event we accept: far above any chunk an LLM API sends.
MAX_EVENT_BYTES = 8 * 1024 * 1024


@attrs.frozen
class SSEEvent:
    """One event: its ``event`` name (``message`` when unnamed) and its ``data``."""

    data: bytes
    event: str = "message"


class SSEDecoder:
    """Turns body bytes, fed in arbitrary pieces, into whole ``SSEEvent``s."""

    def __init__(self, *, label: str, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._label = label
        self._max = max_event_bytes
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._event = "message"

    def feed(self, piece: bytes) -> list[SSEEvent]:
        """The events completed by ``piece``."""
        if (
            piece.endswith(b"\n\n")
            and not self._buffer
            and not self._data
            and self._event == "message"
            and b"\r" not in piece
        ):
            return self._whole(piece)
        self._buffer += piece
        events: list[SSEEvent] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            event = self._line(line)
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        if len(self._buffer) + self._size > self._max:
            raise MalformedResponse(f"{self._label}: a stream event exceeds {self._max} bytes")
        return events

    def _whole(self, piece: bytes) -> list[SSEEvent]:
        """The usual piece, as a provider writes one per chunk: whole events and nothing
        before it pending. An event of one ``data:`` line is taken as it is (the same
        event ``_line`` would make of it, without a pass over each line); others go
        line by line."""
        events: list[SSEEvent] = []
        for block in piece[:-2].split(b"\n\n"):
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(SSEEvent(data=block[6:]))
                continue
            for line in (*block.split(b"\n"), b""):
                event = self._line(line)
                if event is not None:
                    events.append(event)
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = "message"
                return None
            event = SSEEvent(data=b"\n".join(self._data), event=self._event)
            self._data, self._size, self._event = [], 0, "message"
            return event
        if line.startswith(b":"):
            return None
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._size += len(value) + 1
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        # id: and retry: matter to browsers reconnecting, not to us.
        return None


async def sse_events(
    response: aiohttp.ClientResponse, *, label: str, max_event_bytes: int = MAX_EVENT_BYTES
) -> AsyncGenerator[SSEEvent, None]:
    """The events of ``response``'s body, as they arrive.

    Ends quietly at the end of the body; a body cut short by the network is
    ``StreamInterrupted``, silence past the read timeout ``ProviderTimeout``.
    """
    decoder = SSEDecoder(label=label, max_event_bytes=max_event_bytes)
    chunks = response.content.iter_any()
    while True:
        try:
            piece = await anext(chunks)
        except StopAsyncIteration:
            return
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise ProviderTimeout(f"{label}: no data for too long while streaming") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            raise StreamInterrupted(
                f"{label}: the connection broke mid-stream ({type(exc).__name__})"
            ) from exc
        for event in decoder.feed(piece):
            yield event
