"""``decode_fields`` builds messages without attrs' per-call checks: same messages, same
reasons for bad entries."""

from __future__ import annotations

import orjson
import pytest

from orchestrator_broker import DecodeError, Message
from orchestrator_broker.message import decode_fields, encode_fields


def test_a_decoded_message_equals_the_constructed_one() -> None:
    sent = Message(payload={"a": [1, "x"]}, headers={"traceparent": "tp", "k": "v"})
    raw: dict[bytes | str, bytes | str] = {
        k.encode(): v if isinstance(v, bytes) else v.encode()
        for k, v in encode_fields(sent, 2).items()
    }
    got, prior = decode_fields(raw)
    assert got == sent
    assert prior == 2
    assert type(got.headers) is dict
    assert list(got.headers) == ["traceparent", "k"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({b"payload": b"1"}, "missing field(s): id"),
        ({}, "missing field(s): id, payload"),
        ({b"id": b"a", b"payload": b"1", b"": b"x"}, "ValueError: header name '' is reserved"),
        ({b"id": b"a", b"payload": b"1", b"h": b"\xff"}, "UnicodeDecodeError"),
        ({b"id": b"a", b"payload": b"1", b"created_at": b"zz"}, "ValueError: could not"),
        ({b"id": b"a", b"payload": b"{"}, "JSONDecodeError"),
    ],
)
def test_bad_entries_keep_their_reasons(raw: dict[bytes | str, bytes | str], reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_fields(raw)
    assert str(caught.value).startswith(reason)


def test_payload_bytes_round_trip() -> None:
    payload = {"task_id": "t", "n": 1.5}
    got, _ = decode_fields({b"id": b"i", b"payload": orjson.dumps(payload)})
    assert got.payload == payload
    assert got.headers == {}
    assert got.created_at == 0.0
