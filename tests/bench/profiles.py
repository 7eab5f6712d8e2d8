"""Summaries of ``py-spy record --format raw`` profiles: where a process spent its CPU.

A raw profile is one line per distinct stack, ``frame;frame;...;leaf count``, each frame
``function (file:line)``. Idle samples are not recorded (py-spy's default), so shares are of
the time the process was running Python or C code, not of the wall clock.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["summarize"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")
_TRIM = ("site-packages/", "/libs/", "/services/", "/lib/python3.11/")


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in _TRIM:
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def _area(frame: str) -> str:
    """A coarse owner for a frame: the package or library it belongs to."""
    match = _FRAME.match(frame.strip())
    path = match["file"] if match else frame
    for marker, name in (
        ("orchestrator_broker", "orchestrator_broker"),
        ("orchestrator_worker", "orchestrator_worker"),
        ("orchestrator_api", "orchestrator_api"),
        ("orchestrator_telemetry", "orchestrator_telemetry"),
        ("opentelemetry", "opentelemetry"),
        ("site-packages/redis", "redis-py"),
        ("site-packages/aiohttp", "aiohttp"),
        ("site-packages/multidict", "aiohttp"),
        ("site-packages/yarl", "aiohttp"),
        ("asyncio", "asyncio"),
        ("site-packages/attr", "attrs"),
        ("site-packages/cattrs", "cattrs"),
    ):
        if marker in path:
            return name
    return "other"


def summarize(path: Path, top: int = 15, rate: int | None = None) -> dict[str, Any]:
    """Top functions by self and by inclusive samples, and self samples per package.

    Samples taken while importing (start-up) are left out and counted apart.
    """
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = imports = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any(f.startswith("_find_and_load ") for f in frames):
            imports += count  # start-up (and rare lazy) imports: not the steady state
            continue
        total += count
        leaf[_short(frames[-1])] += count
        areas[_area(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count

    def shares(counter: Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(100.0 * c / total, 1)] for name, c in counter.most_common(n)]

    summary: dict[str, Any] = {
        "samples": total,
        "import_samples_excluded": imports,
        "file": str(path),
    }
    if rate:
        summary["busy_seconds"] = round(total / rate, 2)
    if total:
        summary["self_pct_by_package"] = dict(shares(areas, len(areas)))
        summary["self_pct_top"] = shares(leaf, top)
        summary["inclusive_pct_top"] = shares(inclusive, top * 2)
    return summary
