"""What counts as blank text, written once for the server and for the OpenAPI document.

A prompt, a message's content or a model name must not be blank. Python's ``str.strip()``
and JSON Schema's ``\\S`` (ECMAScript regular expressions) disagree on what whitespace is:
Python counts U+001C..U+001F and U+0085, ECMAScript counts U+FEFF. So both sides use one
explicit character class, the union of the two, and agree on every string.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["NOT_BLANK_PATTERN", "WHITESPACE", "is_blank", "strip"]

#: A regular expression (valid in Python and in ECMAScript, so in JSON Schema ``pattern``)
#: that a non-blank text matches somewhere: any character that is not whitespace.
NOT_BLANK_PATTERN: Final = (
    r"[^\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
)
_NOT_BLANK: Final = re.compile(NOT_BLANK_PATTERN)
#: The whitespace characters themselves, as a character class (the same union).
WHITESPACE: Final = "[" + NOT_BLANK_PATTERN[2:]
_STRIP: Final = re.compile(f"^{WHITESPACE}+|{WHITESPACE}+$")


def is_blank(text: str) -> bool:
    """Whether ``text`` is empty or only whitespace (by ``NOT_BLANK_PATTERN``)."""
    return _NOT_BLANK.search(text) is None


def strip(text: str) -> str:
    """``text`` without leading and trailing whitespace (by ``NOT_BLANK_PATTERN``, which
    ``str.strip()`` differs from by U+FEFF)."""
    return _STRIP.sub("", text)
