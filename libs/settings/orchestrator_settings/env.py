"""Typed readers of environment variables; each raises ``ConfigError`` naming the variable.

Every reader treats an unset or blank variable as "not given" and returns the caller's
default (``None`` included, so a caller can tell "unset" from a value). Values are stripped
of surrounding whitespace before they are parsed. Messages quote the offending value, except
where it may be a credential: URLs, secrets and ``secret=True`` mappings never echo it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

import attrs

from .errors import ConfigError
from .secret import Secret

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "Case", "Env"]

_D = TypeVar("_D")
_S = TypeVar("_S", bound=str)
_V = TypeVar("_V")

#: What ``Env.boolean`` accepts, case-insensitively, unless told otherwise.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

#: C0 controls (CR, LF and tab among them), DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: How ``choice`` and ``items`` fold a value before comparing it.
Case = Literal["lower", "upper", "keep"]


def _os_environ() -> Mapping[str, str]:
    return os.environ


def _fold(value: str, case: Case) -> str:
    if case == "lower":
        return value.lower()
    if case == "upper":
        return value.upper()
    return value


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"is outside {low:g}..{high:g}"
    if low is not None:
        return "must be zero or more" if low == 0 else f"must be >= {low:g}"
    return f"must be <= {high:g}"


@attrs.frozen
class Env:
    """The environment a process was started with, read through typed, validating readers.

    ``error`` is the ``ConfigError`` subclass raised (a library may keep its own subclass so
    its callers can tell its errors apart; ``except ConfigError`` still catches them all).
    """

    environ: Mapping[str, str] = attrs.field(factory=_os_environ, repr=False)
    error: type[ConfigError] = ConfigError

    def fail(self, name: str, problem: str) -> ConfigError:
        """The error to raise for ``name``: ``raise env.fail("PORT", "...")``."""
        return self.error(name, problem)

    def raw(self, name: str) -> str | None:
        """The stripped value of ``name``, or None when it is unset or blank."""
        value = self.environ.get(name)
        if value is None:
            return None
        return value.strip() or None

    def first(self, *names: str) -> str | None:
        """The first of ``names`` that is set (not blank): the signal-specific one wins."""
        for name in names:
            if self.raw(name) is not None:
                return name
        return None

    def text(
        self,
        name: str,
        default: _D,
        *,
        pattern: re.Pattern[str] | None = None,
        expected: str = "is not of the expected form",
    ) -> str | _D:
        """A string; with ``pattern``, one that matches it whole (``expected`` says how)."""
        raw = self.raw(name)
        if raw is None:
            return default
        if pattern is not None and pattern.fullmatch(raw) is None:
            raise self.fail(name, f"{raw!r} {expected}")
        return raw

    def integer(
        self,
        name: str,
        default: _D,
        *,
        low: int | None = None,
        high: int | None = None,
        hint: str = "",
    ) -> int | _D:
        """A whole number within ``low``..``high`` (inclusive; either may be open)."""
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self.fail(name, f"{raw!r} is not a whole number") from None
        if (low is not None and value < low) or (high is not None and value > high):
            note = f" ({hint})" if hint else ""
            raise self.fail(name, f"{value} {_bounds(low, high)}{note}")
        return value

    def number(
        self,
        name: str,
        default: _D,
        *,
        low: float | None = None,
        high: float | None = None,
        positive: bool = False,
        finite: bool = True,
    ) -> float | _D:
        """A number within ``low``..``high`` (inclusive), above zero if ``positive``.

        NaN is never accepted; infinity only with ``finite=False``.
        """
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(name, f"{raw!r} is not a number") from None
        if math.isnan(value) or (finite and math.isinf(value)):
            raise self.fail(name, f"{raw!r} is not a finite number")
        if positive and value <= 0:
            raise self.fail(name, f"{raw!r} must be positive")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(name, f"{raw!r} {_bounds(low, high)}")
        return value

    def seconds(self, name: str, default: _D, *, positive: bool = False) -> float | _D:
        """A duration in seconds (or another unit the name says): finite, zero or more, and
        above zero if ``positive``."""
        return self.number(name, default, low=0.0, positive=positive)

    def boolean(
        self,
        name: str,
        default: bool,
        *,
        true: Collection[str] = TRUE_WORDS,
        false: Collection[str] = FALSE_WORDS,
    ) -> bool:
        """``true``/``false`` (by default also 1/0, yes/no, on/off), case-insensitive."""
        raw = self.raw(name)
        if raw is None:
            return default
        value = raw.lower()
        if value in true:
            return True
        if value in false:
            return False
        raise self.fail(name, f"{raw!r} is not true or false")

    def choice(self, name: str, default: _S, choices: Sequence[_S], *, case: Case = "lower") -> _S:
        """One of ``choices``, compared after folding the value to ``case``."""
        raw = self.raw(name)
        if raw is None:
            return default
        value = _fold(raw, case)
        for choice in choices:
            if choice == value:
                return choice
        raise self.fail(name, f"{raw!r} is not one of {', '.join(choices)}")

    def items(
        self,
        name: str,
        default: _D,
        *,
        choices: Sequence[str] | None = None,
        case: Case = "keep",
    ) -> tuple[str, ...] | _D:
        """A comma-separated list (blank entries skipped), each one of ``choices`` if given."""
        raw = self.raw(name)
        if raw is None:
            return default
        values = tuple(_fold(part.strip(), case) for part in raw.split(",") if part.strip())
        if choices is not None:
            unknown = sorted({value for value in values if value not in choices})
            if unknown:
                raise self.fail(
                    name, f"{', '.join(map(repr, unknown))}: expected {' or '.join(choices)}"
                )
        return values

    def url(
        self,
        name: str,
        default: _D,
        *,
        schemes: Sequence[str] = ("http", "https"),
        credentials: bool = True,
        query: bool = True,
    ) -> str | _D:
        """A URL with one of ``schemes`` and a host; see ``check_url``. Returned as given."""
        raw = self.raw(name)
        if raw is None:
            return default
        return self.check_url(name, raw, schemes=schemes, credentials=credentials, query=query)

    def check_url(
        self,
        name: str,
        value: str,
        *,
        schemes: Sequence[str] = ("http", "https"),
        credentials: bool = True,
        query: bool = True,
    ) -> str:
        """``value`` if it is a URL with one of ``schemes``, a host and a valid port; without
        ``credentials``, no ``user:password@``; without ``query``, no query or fragment.

        The value is never echoed: a mistyped URL may hold a password or a key.
        """
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError as exc:
            raise self.fail(name, f"is not a valid URL ({exc})") from None
        if parts.scheme not in schemes or not parts.hostname:
            kinds = " or ".join(f"{scheme}://" for scheme in schemes)
            raise self.fail(name, f"must be an {kinds} URL with a host")
        if not credentials and (parts.username is not None or parts.password is not None):
            raise self.fail(name, "must not hold credentials")
        if not query and (parts.query or parts.fragment):
            raise self.fail(name, "must not have a query or a fragment")
        return value

    def secret(self, name: str, *, printable: bool = True) -> Secret | None:
        """A credential, held in ``Secret`` so no ``repr`` or log line shows it.

        ``printable``: refuse a value with a control character inside (CR, LF, tab, NUL,
        DEL, C1): no HTTP header can carry one, so such a key (a paste that took a line
        break along) would fail every call, or split the header it is sent in.
        """
        raw = self.raw(name)
        if raw is None:
            return None
        if printable and _CONTROL.search(raw) is not None:
            raise self.fail(
                name, "contains a control character (CR, LF or another); the value is not shown"
            )
        return Secret(raw)

    def mapping(
        self,
        name: str,
        value: Callable[[str], _V],
        *,
        key: re.Pattern[str] | None = None,
        entry: str = "key=value",
        unique: bool = True,
        secret: bool = False,
        percent_encoded: bool = False,
    ) -> dict[str, _V]:
        """``key=value,key=value`` as a dict (empty when unset); blank entries are skipped.

        ``value`` parses each value and raises ``ValueError`` for a bad one (the message names
        the key). ``key`` is the pattern a key must match whole; ``entry`` describes an entry
        for the message about a malformed one. ``unique``: a repeated key is an error (else
        the last wins). ``secret``: messages name the entry's position, never its text.
        ``percent_encoded``: keys and values are percent-decoded (W3C baggage style).
        """
        raw = self.raw(name)
        if raw is None:
            return {}
        result: dict[str, _V] = {}
        entries = (part.strip() for part in raw.split(","))
        for number, item in enumerate((part for part in entries if part), start=1):
            left, equals, right = item.partition("=")
            left, right = left.strip(), right.strip()
            if not equals or not left or (key is not None and key.fullmatch(left) is None):
                shown = f"entry {number}" if secret else repr(item)
                raise self.fail(name, f"{shown} is not {entry}")
            if percent_encoded:
                left, right = unquote(left), unquote(right)
            if unique and left in result:
                raise self.fail(name, f"{left} is listed twice")
            try:
                result[left] = value(right)
            except ConfigError:
                raise
            except ValueError as exc:
                problem = "malformed value" if secret else str(exc)
                raise self.fail(name, f"{left}: {problem}") from None
        return result

    def parsed(self, name: str, parse: Callable[[str, str], _V], default: _D) -> _V | _D:
        """A value in a format of the caller's own: ``parse(name, raw)``.

        ``parse`` may raise ``ConfigError`` itself, or ``ValueError``, which becomes a
        ``ConfigError`` naming ``name``.
        """
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            return parse(name, raw)
        except ConfigError:
            raise
        except ValueError as exc:
            raise self.fail(name, str(exc)) from None
