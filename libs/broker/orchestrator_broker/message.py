"""The message that travels through a broker, and its wire encoding.

On Redis a message is one stream entry: the reserved fields ``id``, ``created_at``,
``payload`` (and ``prior_deliveries`` after a delayed redelivery), plus one plain field per
header, so ``XRANGE`` shows ``traceparent`` as it is and other languages can read it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import attrs
import orjson
from cattrs.preconf.orjson import make_converter

from .errors import DecodeError

#: Stream fields a header may not use, because the encoding owns them (the ``fair_*`` ones
#: carry a keyed entry's key, priority and enqueue time: see ``protocol``).
RESERVED_FIELDS = frozenset(
    {"id", "created_at", "payload", "prior_deliveries"}
    | {"fair_key", "fair_priority", "fair_enqueued"}
)

#: The private converter for payloads; services never touch the global one.
_converter = make_converter()


def _new_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex (minus its version bits) at a third of
    # the cost: one per published message.
    return os.urandom(16).hex()


def _check_headers(_: Message, __: attrs.Attribute[Any], headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header {name!r} must map str to str")
        if name in RESERVED_FIELDS or not name:
            raise ValueError(f"header name {name!r} is reserved or empty")


def _freeze_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    return dict(headers)


@attrs.frozen
class Message:
    """One unit of work or one result: a JSON payload plus string headers.

    ``payload`` is any JSON-compatible value (services put an attrs class through their own
    converter first); ``headers`` carry metadata such as W3C ``traceparent``.
    """

    payload: Any
    id: str = attrs.field(factory=_new_id)
    headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze_headers, validator=_check_headers
    )
    created_at: float = attrs.field(factory=time.time)

    def with_headers(self, extra: Mapping[str, str]) -> Message:
        """A copy with ``extra`` merged over the existing headers."""
        return self.replace_headers({**self.headers, **extra})

    def replace_headers(self, headers: Mapping[str, str]) -> Message:
        """A copy with exactly ``headers`` (``attrs.evolve`` without its per-call
        introspection: tracing calls this on every publish). Name every field here."""
        return Message(
            payload=self.payload, id=self.id, headers=headers, created_at=self.created_at
        )


def _dumps(payload: Any) -> bytes:
    # JSON-compatible payloads (the contract) go straight to orjson; the converter's
    # unstructure pass over a plain dict cost more than the encoding itself. Anything orjson
    # refuses (an attrs instance, a set, non-str keys) still goes through the converter.
    try:
        return orjson.dumps(payload)
    except TypeError:
        return _converter.dumps(payload)


def encode_fields(message: Message, prior_deliveries: int = 0) -> dict[str, bytes | str]:
    """The stream fields for ``message``: reserved fields first, then one per header."""
    fields: dict[str, bytes | str] = {
        "id": message.id,
        "created_at": repr(message.created_at),
        "payload": _dumps(message.payload),
    }
    if prior_deliveries:
        fields["prior_deliveries"] = str(prior_deliveries)
    fields.update(message.headers)
    return fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded_message(payload: Any, id: str, headers: dict[str, str], created_at: float) -> Message:
    """``Message(payload, id, headers, created_at)`` for headers already checked (fresh
    ``str`` to ``str``, none reserved or empty) without attrs' per-call converter and
    validator: one per delivered entry. A test holds it equal to the constructor's result."""
    message: Message = _new(Message)
    _set(message, "payload", payload)
    _set(message, "id", id)
    _set(message, "headers", headers)
    _set(message, "created_at", created_at)
    return message


_new = object.__new__
_set = object.__setattr__


def decode_fields(raw: Mapping[bytes | str, bytes | str]) -> tuple[Message, int]:
    """Rebuild a message from stream fields; returns it with its prior delivery count.

    Raises ``DecodeError`` for anything this library did not write (missing or malformed
    reserved fields, non-UTF-8 header text), so the consumer can dead-letter it with a reason.
    """
    # One pass over the fields (this runs for every delivered entry); the checks run in the
    # order the plain version ran them, so a bad entry gets the same reason.
    try:
        reserved: dict[str, bytes | str] = {}
        others: dict[str, bytes | str] = {}
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else key
            if name in RESERVED_FIELDS:
                reserved[name] = value
            else:
                others[name] = value
        if "id" not in reserved or "payload" not in reserved:
            missing = {"id", "payload"} - reserved.keys()
            raise DecodeError(f"missing field(s): {', '.join(sorted(missing))}")
        payload = orjson.loads(reserved["payload"])
        created_at = float(_text(reserved["created_at"])) if "created_at" in reserved else 0.0
        prior = int(_text(reserved["prior_deliveries"])) if "prior_deliveries" in reserved else 0
        headers = {k: _text(v) for k, v in others.items()}
        message_id = _text(reserved["id"])
        if "" in headers:
            raise ValueError("header name '' is reserved or empty")
        message = _decoded_message(payload, message_id, headers, created_at)
    except DecodeError:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
    return message, prior
