"""What both adapters share of flags: the watch's (re)subscription marker and the checks."""

from __future__ import annotations

from typing import Final

from ._presence import check_ttl

__all__ = ["SUBSCRIBED", "check_flag"]

#: What ``watch_flags`` yields each time its subscription is (re)established: a flag raised
#: while it was not subscribed may have been missed, so a caller that must not miss one
#: checks what it holds with ``raised_flags`` (no flag is named by the empty string).
SUBSCRIBED: Final = ""


def check_flag(name: str, ttl: float) -> None:
    """``ValueError`` for an empty flag name or a TTL that is not a positive number."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a flag name is a non-empty string, got {name!r}")
    check_ttl(ttl)
