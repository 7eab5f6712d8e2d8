"""A string that never shows itself, for API keys and passwords read from the environment."""

from __future__ import annotations

__all__ = ["Secret"]


class Secret:
    """A secret string that does not show itself: ``repr``/``str`` give ``'***'``.

    ``reveal()`` is the only way to the value; call it where the value goes on the wire.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
