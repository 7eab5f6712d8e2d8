"""The validation pass's line splitter: line numbers as an editor counts them, long lines
dropped without being held."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from orchestrator_api.batch.runner import _split_lines


async def _chunks(*parts: bytes) -> AsyncGenerator[bytes, None]:
    for part in parts:
        yield part


async def _split(*parts: bytes, limit: int = 8) -> list[tuple[int, bytes | None]]:
    return [item async for item in _split_lines(_chunks(*parts), limit)]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((b"a\nb\n",), [(1, b"a"), (2, b"b")]),
        ((b"a\nb",), [(1, b"a"), (2, b"b")]),
        ((b"a", b"b\n", b"\nc"), [(1, b"ab"), (2, b""), (3, b"c")]),
        ((b"0123456789\nok\n",), [(1, None), (2, b"ok")]),
        (
            (
                b"0123",
                b"45678",
                b"9abc",
                b"\nok",
            ),
            [(1, None), (2, b"ok")],
        ),
        ((b"ok\n0123456789",), [(1, b"ok"), (2, None)]),
        ((b"",), []),
    ],
)
async def test_lines_and_their_numbers(
    parts: tuple[bytes, ...], expected: list[tuple[int, bytes | None]]
) -> None:
    assert await _split(*parts) == expected
