"""The batch runner's line splitter: line numbers as an editor counts them (validation),
stretches that resume where the last one ended (ingest), long lines dropped without being
held."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from orchestrator_api.batch.runner import _read_lines, _split_lines


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


def _from(data: bytes, start: int, size: int) -> AsyncGenerator[bytes, None]:
    """The file from byte ``start``, in chunks of ``size`` bytes (as the store streams it)."""

    async def chunks() -> AsyncGenerator[bytes, None]:
        for offset in range(start, len(data), size):
            yield data[offset : offset + size]

    return chunks()


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
async def test_the_ingest_reads_stretches_and_resumes_where_one_ended(size: int) -> None:
    data = b'{"a":1}\n\n   \n0123456789abc\n{"b":2}\n{"c":3}\n  \n{"d":4}'
    stretches = []
    cursor = 0
    while True:
        read = await _read_lines(_from(data, cursor, size), cursor, 2, 10)
        stretches.append((read.lines, read.cursor, read.eof))
        cursor = read.cursor
        if read.eof:
            break
    # Blank lines are skipped, a long line is None, and each stretch ends just past its last
    # line, so the next one starts there; the last ends at the end of the file.
    assert stretches == [
        ([b'{"a":1}', None], 27, False),
        ([b'{"b":2}', b'{"c":3}'], 43, False),
        ([b'{"d":4}'], len(data), True),
    ]


async def test_the_ingest_of_a_file_ending_in_a_long_line_or_blanks() -> None:
    long_end = b'{"a":1}\n0123456789abc'
    read = await _read_lines(_from(long_end, 0, 4), 0, 10, 10)
    assert (read.lines, read.cursor, read.eof) == ([b'{"a":1}', None], len(long_end), True)
    blank_end = b'{"a":1}\n  '
    read = await _read_lines(_from(blank_end, 0, 4), 0, 10, 10)
    assert (read.lines, read.cursor, read.eof) == ([b'{"a":1}'], len(blank_end), True)
