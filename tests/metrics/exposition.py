"""A strict reader of the Prometheus 0.0.4 and OpenMetrics 1.0 text formats, for tests.

Independent of the registry's writer: it parses label values with their escapes, exemplars,
and checks the structure (``# HELP``/``# TYPE`` before samples, ``# EOF`` last in OpenMetrics).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import attrs

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE_NAME = re.compile(rf"^{_NAME}")


@attrs.frozen
class Exemplar:
    labels: dict[str, str]
    value: float
    timestamp: float | None


@attrs.frozen
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    exemplar: Exemplar | None = None


@attrs.define
class Family:
    name: str
    type: str = "untyped"
    help: str = ""
    samples: list[Sample] = attrs.field(factory=list)


def parse_labels(text: str) -> tuple[dict[str, str], str]:
    """``{a="x",b="y"}rest`` -> ({a: x, b: y}, rest); handles ``\\\\``, ``\\"``, ``\\n``."""
    assert text.startswith("{"), text
    labels: dict[str, str] = {}
    i = 1
    while True:
        if text[i] == "}":
            return labels, text[i + 1 :]
        match = re.match(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"", text[i:])
        assert match, f"bad label at {text[i:]!r}"
        name = match.group(1)
        i += match.end()
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                nxt = text[i + 1]
                value.append({"\\": "\\", '"': '"', "n": "\n"}[nxt])
                i += 2
            else:
                value.append(text[i])
                i += 1
        i += 1
        assert name not in labels, f"duplicate label {name}"
        labels[name] = "".join(value)
        if text[i] == ",":
            i += 1


def parse_number(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


def _unescape_help(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def parse(text: str, *, openmetrics: bool = False) -> dict[str, Family]:
    """Families by name (OpenMetrics counter families without ``_total``)."""
    lines = text.split("\n")
    assert lines[-1] == "", "the exposition ends with a newline"
    lines = lines[:-1]
    if openmetrics:
        assert lines, "empty exposition"
        assert lines[-1] == "# EOF", "OpenMetrics ends with # EOF"
        lines = lines[:-1]
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in lines:
        assert line, "no blank lines"
        if line.startswith("# "):
            _, kind, name, *rest = line.split(" ", 3)
            assert kind in ("HELP", "TYPE"), line
            family = families.setdefault(name, Family(name))
            if kind == "TYPE":
                family.type = rest[0]
            else:
                family.help = _unescape_help(rest[0] if rest else "")
            current = family
            continue
        match = _SAMPLE_NAME.match(line)
        assert match, f"not a sample: {line!r}"
        name, tail = match.group(0), line[match.end() :]
        labels: dict[str, str] = {}
        if tail.startswith("{"):
            labels, tail = parse_labels(tail)
        assert tail.startswith(" "), f"no value: {line!r}"
        value_text, _, exemplar_text = tail[1:].partition(" # ")
        exemplar = None
        if exemplar_text:
            assert openmetrics, "exemplars only in OpenMetrics"
            exemplar_labels, tail = parse_labels(exemplar_text)
            parts = tail.split()
            exemplar = Exemplar(
                exemplar_labels,
                parse_number(parts[0]),
                float(parts[1]) if len(parts) > 1 else None,
            )
        sample = Sample(name, labels, parse_number(value_text.split()[0]), exemplar)
        assert current is not None, f"sample before any # TYPE: {line!r}"
        assert sample.name.startswith(current.name), f"{sample.name} outside {current.name}"
        current.samples.append(sample)
    return families


def samples(families: dict[str, Family]) -> Iterable[Sample]:
    for family in families.values():
        yield from family.samples


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    found = [
        s.value
        for s in samples(families)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert found, f"no sample {name} {labels}"
    return sum(found)


def names(families: dict[str, Family]) -> set[str]:
    return {s.name for s in samples(families)}
