"""A small dotenv reader for ``--env-file`` (``.api_env``, ``.worker_env``)."""

from __future__ import annotations

import re
from pathlib import Path

_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


class EnvFileError(ValueError):
    """A line of an env file that is not ``NAME=value``."""


def parse_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines; ``#`` comments, blank lines, ``export`` and quotes allowed.

    Single-quoted values are literal; double-quoted ones understand ``\\n``, ``\\"`` and
    ``\\\\``; unquoted values end at `` #`` (an inline comment).
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise EnvFileError(f"{path}:{number}: expected NAME=value, got {line[:40]!r}")
        name, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = (
                    value.replace("\\\\", "\0")
                    .replace("\\n", "\n")
                    .replace('\\"', '"')
                    .replace("\0", "\\")
                )
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[name] = value
    return values
