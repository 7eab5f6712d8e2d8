"""The dead-letter record both adapters write to ``<stream>:dead`` and read back: the original
entry's fields as they were, then these (the Redis adapter's Lua scripts spell them out)."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import DecodeError
from .message import Message, decode_fields
from .protocol import DeadLetter

__all__ = [
    "DEAD_CONSUMER",
    "DEAD_DELIVERY_COUNT",
    "DEAD_ENTRY_ID",
    "DEAD_FIELDS",
    "DEAD_GROUP",
    "DEAD_REASON",
    "read_dead_letter",
]

DEAD_REASON = "dead_reason"
DEAD_ENTRY_ID = "dead_entry_id"
DEAD_GROUP = "dead_group"
DEAD_DELIVERY_COUNT = "dead_delivery_count"
DEAD_CONSUMER = "dead_consumer"
DEAD_FIELDS = frozenset(
    {DEAD_REASON, DEAD_ENTRY_ID, DEAD_GROUP, DEAD_DELIVERY_COUNT, DEAD_CONSUMER}
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _text_lossy(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def read_dead_letter(entry_id: str, raw: Mapping[bytes | str, bytes | str]) -> DeadLetter:
    """The ``DeadLetter`` of one ``<stream>:dead`` entry; its ``message`` is None when the
    original fields are not a message (a corrupt or foreign entry)."""
    fields = {_text(k): v for k, v in raw.items()}
    text = {k: _text_lossy(v) for k, v in fields.items()}
    original: dict[bytes | str, bytes | str] = {
        k: v for k, v in fields.items() if k not in DEAD_FIELDS
    }
    message: Message | None = None
    if original:
        try:
            message, _ = decode_fields(original)
        except DecodeError:
            message = None
    return DeadLetter(
        entry_id=entry_id,
        original_entry_id=text.get(DEAD_ENTRY_ID, ""),
        reason=text.get(DEAD_REASON, ""),
        group=text.get(DEAD_GROUP, ""),
        delivery_count=int(text.get(DEAD_DELIVERY_COUNT, "0") or 0),
        message=message,
        raw_fields={k: v for k, v in text.items() if k not in DEAD_FIELDS},
    )
