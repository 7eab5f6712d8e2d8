"""The processes a benchmark starts, each stopped by its PID when the benchmark ends.

``Processes`` is a context manager: everything started through it (a throwaway
``redis-server``, ``ai-orchestrator`` services, load generators) is stopped on exit, on an
error or on Ctrl-C: SIGTERM, a bounded wait, then SIGKILL. Nothing is ever found or killed
by name.

Optionally a service runs under ``py-spy record`` (sampling profiler, raw collapsed stacks),
which then writes its profile when the service exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from tests.support.redis_server import RedisServer, free_port

__all__ = [
    "BenchError",
    "CpuMeter",
    "Processes",
    "Service",
    "bench_module_env",
    "cpu_seconds",
    "free_port",
    "orchestrator_command",
    "pin",
    "py_spy",
    "repo_root",
    "service_env",
    "usable_cpus",
    "wait_http_ok",
]

#: How long a SIGTERMed process may take to exit before it gets SIGKILL.
STOP_GRACE = 15.0
#: py-spy samples per second (the summaries turn sample counts into seconds with it).
PROFILE_RATE = 100

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark could not run (a process did not start, a tool is missing...)."""


def orchestrator_command() -> list[str]:
    """How to run ``ai-orchestrator``: the console script beside this interpreter if installed
    (what a deployment runs), else the same entry point through ``-m``."""
    script = Path(sys.executable).with_name("ai-orchestrator")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "orchestrator_cli"]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def bench_module_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus the repository on ``PYTHONPATH``, to run ``python -m tests.bench.X``."""
    merged = dict(env)
    path = [str(repo_root()), *filter(None, [merged.get("PYTHONPATH")])]
    merged["PYTHONPATH"] = os.pathsep.join(path)
    return merged


def py_spy() -> str | None:
    """The ``py-spy`` executable, next to this interpreter or on ``PATH``."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def service_env(redis_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an ``ai-orchestrator`` service: tracing off, quiet logs.

    Every ``OTEL_*`` and ``JAEGER_URI`` variable of the caller is dropped, so no span is
    exported whatever the shell running the benchmark has set; only ``extra`` (``--tracing``,
    ``--service-env``) may turn tracing on.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "JAEGER_URI"}
    env.update({"REDIS_URI": redis_url, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far, from ``/proc``."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    # After the ")" that ends the command name: state is field 0, utime 11, stime 12.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (what ``taskset -a -p`` does)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cpus)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


@attrs.define
class CpuMeter:
    """CPU seconds used by named processes between ``start()`` and ``stop()``."""

    pids: dict[str, int]
    _begin: dict[str, float] = attrs.field(factory=dict)
    _wall: float = 0.0
    result: dict[str, dict[str, float]] = attrs.field(factory=dict)

    def start(self) -> None:
        self._wall = time.monotonic()
        self._begin = {name: self._read(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, dict[str, float]]:
        """Per process: CPU seconds, and the share of one core they are of the wall time."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        self.result = {}
        for name, pid in self.pids.items():
            used = self._read(pid) - self._begin.get(name, 0.0)
            self.result[name] = {
                "cpu_seconds": round(used, 3),
                "core_share": round(used / wall, 3),
            }
        return self.result

    @staticmethod
    def _read(pid: int) -> float:
        try:
            return cpu_seconds(pid)
        except OSError:
            return 0.0


@attrs.define
class Service:
    """A started process; ``pid`` is the program's own (under py-spy: py-spy's child)."""

    name: str
    process: subprocess.Popen[bytes]
    pid: int
    log: Path
    profile: Path | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """Starts processes and stops all of them, by PID, when the ``with`` block ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._redis: list[RedisServer] = []
        self._services: list[Service] = []
        #: ``(name, pid)`` of everything started, also written to ``<workdir>/pids.txt``.
        self.started: list[tuple[str, int]] = []

    def _record(self, name: str, pid: int) -> None:
        self.started.append((name, pid))
        with open(self.workdir / "pids.txt", "a") as pids:
            pids.write(f"{name} {pid}\n")

    def __enter__(self) -> Processes:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop_all()

    def redis(self, name: str = "redis") -> RedisServer:
        """A throwaway ``redis-server`` on a free loopback port: no RDB snapshots, no AOF.

        Persistence is off on purpose: the benchmarks measure the orchestrator, not the
        disk (with ``appendfsync always`` every write would wait for an fsync).
        """
        server = RedisServer(self.workdir / name, appendonly=False)
        self._redis.append(server)
        try:
            server.start()
        finally:
            if server.process is not None:
                self._record(name, server.process.pid)
        return server

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        cpus: set[int] | None = None,
        profile: bool = False,
        profile_rate: int = PROFILE_RATE,
    ) -> Service:
        """Start ``args`` with output to ``<workdir>/<name>.log``.

        ``cpus`` pins it; ``profile`` runs it under ``py-spy record`` (raw collapsed stacks
        to ``<workdir>/<name>.pyspy.txt``, written when the program exits).
        """
        log = self.workdir / f"{name}.log"
        command = list(args)
        profile_path: Path | None = None
        if profile:
            spy = py_spy()
            if spy is None:
                raise BenchError("--profile needs py-spy (pip install py-spy)")
            profile_path = self.workdir / f"{name}.pyspy.txt"
            command = [
                spy, "record", "--format", "raw", "--rate", str(profile_rate),
                "--output", str(profile_path), "--", *command,
            ]  # fmt: skip
        with open(log, "wb") as out:
            # A session of its own: a Ctrl-C in the terminal reaches only this harness,
            # which then stops each process itself, in order.
            process = subprocess.Popen(
                command,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, process.pid, log, profile_path)
        self._services.append(service)
        self._record(name, process.pid)
        if profile:
            service.pid = _child_of(process.pid, timeout=10.0)
            self._record(f"{name} (under py-spy)", service.pid)
        if cpus:
            with contextlib.suppress(OSError):
                pin(service.pid, cpus)
        return service

    def stop(self, service: Service, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM the program (by PID), wait up to ``grace``, then SIGKILL; the exit code."""
        if service.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGTERM)
            try:
                service.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                for pid in {service.pid, service.process.pid}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                service.process.wait(timeout=grace)
        return service.process.returncode

    def stop_all(self) -> None:
        """Stop every service (newest first), then the redis-servers."""
        while self._services:
            service = self._services.pop()
            with contextlib.suppress(Exception):
                self.stop(service)
        while self._redis:
            server = self._redis.pop()
            with contextlib.suppress(Exception):
                server.stop()


def _child_of(pid: int, timeout: float) -> int:
    """The PID of ``pid``'s first child (the profiled program under py-spy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.01)
    raise BenchError(f"py-spy (pid {pid}) started no program within {timeout:g} s")


def wait_http_ok(url: str, timeout: float, service: Service) -> None:
    """Poll ``url`` until it answers 200, the service dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not service.alive():
            raise BenchError(f"{service.name} exited early:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{service.name} not ready at {url} within {timeout:g} s ({last})")
