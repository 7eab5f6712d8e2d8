"""The SSE decoder: the same events however the body is cut into pieces."""

from __future__ import annotations

import random

import pytest

from orchestrator_worker.providers._sse import SSEDecoder, SSEEvent
from orchestrator_worker.providers.errors import MalformedResponse

BODY = (
    b'data: {"a": 1}\n\n'
    b": keep-alive\n\n"
    b"event: error\ndata: first line\ndata: second line\n\n"
    b"data:no space\n\n"
    b"data: \n\n"
    b"id: 7\nretry: 10\ndata: after id\n\n"
    b"\n\n"
    b"event: ping\n\n"
    b'data: {"b": 2}\r\n\r\n'
    b"data: [DONE]\n\n"
)

EXPECTED = [
    SSEEvent(data=b'{"a": 1}'),
    SSEEvent(data=b"first line\nsecond line", event="error"),
    SSEEvent(data=b"no space"),
    SSEEvent(data=b""),
    SSEEvent(data=b"after id"),
    SSEEvent(data=b'{"b": 2}'),
    SSEEvent(data=b"[DONE]"),
]


def decode(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder(label="test")
    return [event for piece in pieces for event in decoder.feed(piece)]


def test_the_body_in_one_piece() -> None:
    assert decode([BODY]) == EXPECTED


def test_the_body_byte_by_byte() -> None:
    assert decode([BODY[i : i + 1] for i in range(len(BODY))]) == EXPECTED


@pytest.mark.parametrize("seed", range(50))
def test_the_body_cut_anywhere(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(BODY)), rng.randint(1, 12)))
    pieces = [BODY[a:b] for a, b in zip([0, *cuts], [*cuts, len(BODY)], strict=True)]
    assert decode(pieces) == EXPECTED


def test_a_piece_per_event_as_providers_send_them() -> None:
    """Each piece whole events and nothing pending (the fast path), one at a time."""
    pieces = [
        b'data: {"a": 1}\n\n',
        b": keep-alive\n\n",
        b"event: error\ndata: first line\ndata: second line\n\n",
        b"data:no space\n\ndata: \n\n",
        b"id: 7\nretry: 10\ndata: after id\n\n\n\n",
        b"event: ping\n\n",
        b'data: {"b": 2}\r\n\r\n',
        b"data: [DONE]\n\n",
    ]
    assert decode(pieces) == EXPECTED


def test_an_event_name_pending_from_the_last_piece_names_the_next_event() -> None:
    assert decode([b"event: delta\n", b"data: x\n\n"]) == [SSEEvent(data=b"x", event="delta")]


def test_an_event_growing_past_the_limit_is_malformed() -> None:
    decoder = SSEDecoder(label="test", max_event_bytes=100)
    decoder.feed(b"data: " + b"x" * 60 + b"\n")
    with pytest.raises(MalformedResponse, match="exceeds 100 bytes"):
        decoder.feed(b"data: " + b"y" * 60 + b"\n")


def test_a_piece_of_one_line_events_takes_no_pass_per_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The usual chunk of a streamed answer: its events as they are, no line loop."""
    lines: list[bytes] = []
    line = SSEDecoder._line

    def counted(self: SSEDecoder, raw: bytes) -> SSEEvent | None:
        lines.append(raw)
        return line(self, raw)

    monkeypatch.setattr(SSEDecoder, "_line", counted)
    piece = b'data: {"c": "a"}\n\ndata: {"c": "b"}\n\n'
    assert decode([piece]) == [SSEEvent(data=b'{"c": "a"}'), SSEEvent(data=b'{"c": "b"}')]
    assert lines == []
