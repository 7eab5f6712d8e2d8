"""The dead-letter record both adapters write to ``<stream>:dead`` and read back: the original
entry's fields as they were, then these (the Redis adapter's Lua scripts spell them out)."""

from __future__ import annotations

import math
import re
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
    "check_age",
    "check_entry_id",
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


def check_age(older_than: float | None) -> None:
    """``ValueError`` unless ``older_than`` (``purge_dead_letters``) is None or a finite
    number of seconds, zero or more."""
    if older_than is None:
        return
    if not (
        isinstance(older_than, int | float)
        and not isinstance(older_than, bool)
        and math.isfinite(older_than)
        and older_than >= 0
    ):
        raise ValueError(f"older_than must be zero or more seconds, got {older_than!r}")


_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def check_entry_id(entry_id: str) -> None:
    """``ValueError`` unless ``entry_id`` is a stream entry id, ``<ms>-<seq>``."""
    if not (isinstance(entry_id, str) and _ENTRY_ID.fullmatch(entry_id)):
        raise ValueError(f"not a stream entry id (<ms>-<seq>): {entry_id!r}")
