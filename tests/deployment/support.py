"""Readers for the deployment files: YAML, compose interpolation, .dockerignore, Dockerfile."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deployment" / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
LOCAL_STACK = ROOT / "deployment" / "local" / "stack.py"
HEALTHCHECK = DOCKER_DIR / "healthcheck.py"


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def load_module(path: Path, name: str) -> ModuleType:
    """Import a script that is not in a package (stack.py, healthcheck.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def bin_path(name: str) -> str | None:
    """A console script of the test interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


# ---- compose variable interpolation (the subset the compose file uses) -------------------

_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


class MissingVariable(KeyError):
    """A ``${NAME:?message}`` variable that is unset or empty."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """``${X}``, ``${X:-default}``, ``${X-default}``, ``${X:?error}`` and ``$$`` as compose does."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op == ":?":
            if not current:
                raise MissingVariable(f"{name}: {arg}")
            return current
        if op == "?":
            if current is None:
                raise MissingVariable(f"{name}: {arg}")
            return current
        return current or ""

    return _VARIABLE.sub(replace, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(item, env) for key, item in node.items()}
    return node


def strings(node: Any) -> Iterator[str]:
    """Every string value in a YAML/JSON tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from strings(item)


def env_file_values(path: Path) -> dict[str, str]:
    """An env file read by the project's own parser (the one ``--env-file`` uses)."""
    from orchestrator_cli.envfile import parse_env_file

    return parse_env_file(path)


def existing_env_file(compose_dir: Path, reference: str) -> Path:
    """The file an ``env_file`` entry names, or its committed ``.example`` when not created."""
    path = (compose_dir / reference).resolve()
    return path if path.exists() else path.with_name(path.name + ".example")


# ---- .dockerignore ----------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(f"^{out}$")


@attrs.frozen
class DockerIgnore:
    """Docker's rules: last matching pattern wins; a pattern matching a parent matches it too."""

    rules: tuple[tuple[bool, str, re.Pattern[str]], ...]

    @classmethod
    def load(cls, path: Path) -> DockerIgnore:
        rules = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            rules.append((negate, pattern, _pattern_regex(pattern)))
        return cls(tuple(rules))

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negate, _, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not negate
        return excluded

    def may_include_below(self, directory: str) -> bool:
        """Whether some negated pattern could re-include a path under ``directory``."""
        prefix = directory + "/"
        return any(
            negate and (pattern.startswith(prefix) or pattern == directory)
            for negate, pattern, _ in self.rules
        )

    def context_files(self, root: Path) -> Iterator[str]:
        """Relative paths of the files a build context rooted at ``root`` sends."""
        for current, dirs, files in os.walk(root):
            base = Path(current).relative_to(root).as_posix()
            base = "" if base == "." else base
            keep = []
            for name in dirs:
                rel = f"{base}/{name}" if base else name
                if not self.excluded(rel) or self.may_include_below(rel):
                    keep.append(name)
            dirs[:] = keep
            for name in files:
                rel = f"{base}/{name}" if base else name
                if not self.excluded(rel):
                    yield rel


# ---- Dockerfile -------------------------------------------------------------------------


@attrs.frozen
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT (None for the shell form)."""
        text = self.args.strip()
        if text.startswith("["):
            value: list[str] = json.loads(text)
            return value
        return None


@attrs.frozen
class Stage:
    name: str
    base: str
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@attrs.frozen
class Dockerfile:
    args: dict[str, str]
    stages: tuple[Stage, ...]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        lines: list[str] = []
        pending = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                continue  # Docker also skips these inside a continued instruction
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            lines.append(pending + stripped)
            pending = ""
        global_args: dict[str, str] = {}
        stages: list[Stage] = []
        current: list[Instruction] | None = None
        name = base = ""
        for line in lines:
            keyword, _, rest = line.partition(" ")
            keyword = keyword.upper()
            rest = rest.strip()
            if keyword == "FROM":
                if current is not None:
                    stages.append(Stage(name, base, tuple(current)))
                words = rest.split()
                base = words[0]
                name = (
                    words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
                )
                current = []
            elif current is None:
                if keyword == "ARG":
                    key, _, value = rest.partition("=")
                    global_args[key] = value
            else:
                current.append(Instruction(keyword, rest))
        if current is not None:
            stages.append(Stage(name, base, tuple(current)))
        return cls(global_args, tuple(stages))

    def base_image(self, stage: Stage) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), ""), stage.base)

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def parse_env_instruction(args: str) -> list[tuple[str, str]]:
    """``ENV a=1 b="x y"`` -> [(a, 1), (b, x y)] (values unexpanded)."""
    pairs = []
    for word in shlex.split(args, posix=True):
        key, sep, value = word.partition("=")
        assert sep, f"ENV {args!r}: only the key=value form is supported"
        pairs.append((key, value))
    return pairs


def split_run(args: str) -> tuple[list[str], str]:
    """``RUN --mount=... cmd`` -> (["--mount=..."], "cmd")."""
    flags = []
    rest = args.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    return flags, rest


def healthcheck_command(instruction: Instruction) -> list[str]:
    """The exec-form command after ``CMD`` in a HEALTHCHECK instruction."""
    _, _, command = instruction.args.partition("CMD")
    value: list[str] = json.loads(command.strip())
    return value
