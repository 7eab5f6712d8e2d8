"""Message and its stream-field encoding: what goes on the wire comes back the same."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator_broker import DecodeError, Message
from orchestrator_broker.message import RESERVED_FIELDS, decode_fields, encode_fields

# JSON values orjson writes and reads back unchanged: 64-bit ints, finite floats, text
# without lone surrogates.
_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=20,
)
_header_names = _text.filter(lambda name: name != "" and name not in RESERVED_FIELDS)
_messages = st.builds(
    Message,
    payload=_json,
    id=_text.filter(bool),
    headers=st.dictionaries(_header_names, _text, max_size=5),
    created_at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)


def as_redis_returns(fields: dict[str, bytes | str]) -> dict[bytes | str, bytes | str]:
    """What ``XRANGE`` hands back for ``fields``: everything as UTF-8 bytes."""
    return {
        name.encode(): value if isinstance(value, bytes) else value.encode()
        for name, value in fields.items()
    }


@settings(deadline=None, max_examples=200)
@given(message=_messages, prior=st.integers(min_value=0, max_value=1000))
def test_encoding_round_trips(message: Message, prior: int) -> None:
    fields = encode_fields(message, prior_deliveries=prior)
    assert decode_fields(as_redis_returns(fields)) == (message, prior)
    assert decode_fields({k: v for k, v in fields.items()}) == (message, prior)


def test_headers_are_plain_fields() -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    message = Message({"prompt": "hi"}, headers={"traceparent": traceparent})
    fields = encode_fields(message)
    assert fields["traceparent"] == traceparent
    assert set(fields) == {"id", "created_at", "payload", "traceparent"}
    assert "prior_deliveries" not in fields


def test_prior_deliveries_field_only_when_redelivered() -> None:
    fields = encode_fields(Message(1), prior_deliveries=2)
    assert fields["prior_deliveries"] == "2"
    assert decode_fields({k: v for k, v in fields.items()})[1] == 2


@pytest.mark.parametrize("name", sorted(RESERVED_FIELDS | {""}))
def test_reserved_or_empty_header_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="reserved or empty"):
        Message("x", headers={name: "value"})


def test_header_values_must_be_text() -> None:
    with pytest.raises(TypeError):
        Message("x", headers={"attempt": 1})  # type: ignore[dict-item]


def test_with_headers_merges_and_keeps_the_rest() -> None:
    message = Message({"a": 1}, headers={"tenant": "acme", "traceparent": "old"})
    updated = message.with_headers({"traceparent": "new"})
    assert updated.headers == {"tenant": "acme", "traceparent": "new"}
    assert (updated.id, updated.payload, updated.created_at) == (
        message.id,
        message.payload,
        message.created_at,
    )
    assert message.headers["traceparent"] == "old"


def test_messages_get_unique_ids() -> None:
    assert Message(1).id != Message(1).id


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"payload": "1"}, "missing"),
        ({"id": "a"}, "missing"),
        ({"hello": "world"}, "missing"),
        ({"id": "a", "payload": "{not json"}, "JSON"),
        ({"id": "a", "payload": "1", "created_at": "yesterday"}, "ValueError"),
        ({"id": "a", "payload": "1", "prior_deliveries": "many"}, "ValueError"),
        ({"id": "a", "payload": "1", "note": b"\xff\xfe"}, "UnicodeDecodeError"),
    ],
)
def test_foreign_or_corrupt_fields_raise_decode_error(
    fields: dict[bytes | str, bytes | str], complaint: str
) -> None:
    with pytest.raises(DecodeError, match=complaint):
        decode_fields(fields)
