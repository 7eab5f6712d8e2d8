"""What both adapters share of presence: the payload codec and the argument checks."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import orjson

log = logging.getLogger("orchestrator_broker.presence")


def check_ttl(ttl: float) -> None:
    """``ValueError`` unless ``ttl`` is a positive, finite number of seconds."""
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """``payload`` as JSON; ``TypeError`` when it is not a JSON object."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"a presence payload is a mapping, not {type(payload).__name__}")
    return orjson.dumps(dict(payload))


def decode_payload(group: str, member: str, raw: bytes | str | None) -> dict[str, Any] | None:
    """The payload stored for ``member``; None (logged) when it is missing or not an object,
    as a foreign writer could leave it."""
    if raw is None:
        return None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        log.warning("presence %s: member %s has an unreadable payload; skipped", group, member)
        return None
    return payload
