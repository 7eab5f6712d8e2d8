#!/usr/bin/env python3
"""The compose topology as local processes, for machines without Docker.

``up`` starts a private ``redis-server`` (AOF on, data in the state directory), the API and N
worker processes with the same ``.api_env``/``.worker_env`` files as the compose stack, waits
until ``GET /health`` answers 200, records the PIDs and returns. ``down`` stops exactly the
recorded processes (API and workers first, so they drain, then Redis). ``status`` tells
whether they still run. Standard library only; run it with the Python whose environment has
the project installed (``ai-orchestrator`` is looked up next to that interpreter first).

What differs from the compose stack: every address is on 127.0.0.1; ``REDIS_URI`` always
points at this stack's Redis; a ``JAEGER_URI`` naming a compose host (``otel-collector``...)
is dropped (no export) unless ``--jaeger-uri`` gives a reachable collector; each worker gets
its own ``METRICS_PORT``. Ports given as 0 are picked free. Options also read ``LOCAL_STACK_*``
environment variables (see ``--help``). Failure: exit status 1 and one line on stderr.

    python deployment/local/stack.py up --workers 2 --api-port 8080
    python deployment/local/stack.py status
    python deployment/local/stack.py down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = Path(__file__).resolve().parent / ".state"
STATE_FILE = "stack.json"
#: Host names that exist only inside the compose network.
COMPOSE_HOSTS = frozenset({"redis", "otel-collector", "otel", "tempo", "jaeger", "api", "worker"})
_POLL_SECONDS = 0.1


class StackError(Exception):
    """Something the user must fix or look at; printed as one line, exit status 1."""


# ---- small helpers ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (comments, blank lines, ``export`` and surrounding quotes allowed).

    Only used to look at ``JAEGER_URI``: the services parse the file themselves
    (``--env-file``) and report their own errors.
    """
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def local_jaeger_uri(file_value: str | None, override: str | None) -> str:
    """The ``JAEGER_URI`` a local process gets ("" = no export)."""
    if override is not None:
        return override
    if not file_value:
        return ""
    text = file_value if "://" in file_value else f"http://{file_value}"
    host = urlsplit(text).hostname or ""
    return "" if host in COMPOSE_HOSTS else file_value


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against PID reuse); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Field 2 (comm) may contain spaces: the fields after it follow the last ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def is_running(pid: int, start_time: str | None = None) -> bool:
    """Whether ``pid`` is alive (not a zombie) and, if given, still the same process."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited: reap it
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return start_time is None or process_start_time(pid) == start_time


def last_line(path: Path) -> str:
    """The last non-empty line of a log file (for one-line error messages)."""
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        for line in reversed(lines):
            if line:
                return line[:300]
    return "(empty log)"


def redis_ping(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn,
    ):
        conn.sendall(b"PING\r\n")
        return conn.recv(64).startswith(b"+PONG")
    return False


def redis_options(port: int, directory: Path, appendfsync: str) -> list[str]:
    """The compose stack's Redis settings (AOF on, noeviction), on loopback."""
    options = {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(directory),
        "appendonly": "yes",
        "appendfsync": appendfsync,
        "maxmemory-policy": "noeviction",
        "daemonize": "no",
        "protected-mode": "yes",
    }
    return [part for name, value in options.items() for part in (f"--{name}", value)]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


# ---- the stack --------------------------------------------------------------------------


class Stack:
    """The processes of one state directory: start, record, stop."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.state_path = state_dir / STATE_FILE
        self.processes: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}

    # state file

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StackError(f"cannot read {self.state_path}: {exc}") from exc
        return data

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {**self.info, "processes": self.processes}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state_path)

    def running(self) -> dict[str, bool]:
        """Name -> still running, for the recorded processes."""
        recorded: dict[str, dict[str, Any]] = self.load().get("processes", {})
        return {
            name: is_running(int(entry["pid"]), entry.get("start_time"))
            for name, entry in recorded.items()
        }

    # start

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log:
            try:
                # A session of its own: the process outlives `up` and ignores the terminal's ^C.
                process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd=ROOT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise StackError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        self.processes[name] = {
            "pid": process.pid,
            "start_time": process_start_time(process.pid),
            "argv": list(argv),
            "log": str(log_path),
        }
        self.save()
        return process.pid

    def alive_or_fail(self, name: str) -> None:
        entry = self.processes[name]
        if not is_running(entry["pid"], entry["start_time"]):
            raise StackError(
                f"{name} exited during startup; {entry['log']}: {last_line(Path(entry['log']))}"
            )

    def wait_until(
        self, what: str, ready: Callable[[], bool], watch: Sequence[str], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name in watch:
                self.alive_or_fail(name)
            if ready():
                return
            if time.monotonic() >= deadline:
                logs = ", ".join(self.processes[name]["log"] for name in watch)
                raise StackError(f"{what} not ready after {timeout:g}s; see {logs}")
            time.sleep(_POLL_SECONDS)

    # stop

    def stop(self, timeout: float) -> list[str]:
        """Stop the recorded processes (services, then Redis); the names that had to be killed."""
        recorded: dict[str, dict[str, Any]] = self.load().get("processes", {})
        services = {name: entry for name, entry in recorded.items() if name != "redis"}
        killed = _terminate(services, timeout)
        if "redis" in recorded:
            killed += _terminate({"redis": recorded["redis"]}, max(timeout, 10.0))
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        return killed


def _terminate(entries: Mapping[str, Mapping[str, Any]], timeout: float) -> list[str]:
    """SIGTERM the live ones, wait up to ``timeout``, SIGKILL what is left."""
    live = {
        name: (int(entry["pid"]), entry.get("start_time"))
        for name, entry in entries.items()
        if is_running(int(entry["pid"]), entry.get("start_time"))
    }
    for pid, _ in live.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        live = {name: ps for name, ps in live.items() if is_running(*ps)}
        if live:
            time.sleep(_POLL_SECONDS)
    for pid, _ in live.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid, start in live.values():  # wait for the kill to land (bounded)
        end = time.monotonic() + 5.0
        while is_running(pid, start) and time.monotonic() < end:
            time.sleep(_POLL_SECONDS)
    return sorted(live)


# ---- commands ---------------------------------------------------------------------------


def _service_command(option: str | None) -> list[str]:
    if option:
        return shlex.split(option)
    beside = Path(sys.executable).parent / "ai-orchestrator"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ai-orchestrator")
    if found is None:
        raise StackError(
            "ai-orchestrator not found: install the project (pip install -e .) into this "
            "Python's environment, or pass --command"
        )
    return [found]


def _env_file(option: str | None, default_name: str) -> Path:
    if option:
        path = Path(option)
        if not path.is_file():
            raise StackError(f"env file {path} does not exist")
        return path.resolve()
    path = ROOT / default_name
    if path.is_file():
        return path
    example = ROOT / f"{default_name}.example"
    if example.is_file():
        print(f"stack.py: {path} missing, using {example.name}", file=sys.stderr)
        return example
    raise StackError(f"{path} missing: copy {default_name}.example to {default_name}")


def up(args: argparse.Namespace) -> dict[str, Any]:
    """Start Redis, the API and the workers; the recorded state once /health answers 200."""
    if args.workers < 0:
        raise StackError("--workers must be 0 or more")
    stack = Stack(Path(args.state_dir).resolve())
    still = [name for name, alive in stack.running().items() if alive]
    if still:
        raise StackError(
            f"already running in {stack.state_dir} ({', '.join(still)}); run `down` first"
        )
    command = _service_command(args.command)
    redis_server = args.redis_server or shutil.which("redis-server")
    if not redis_server:
        raise StackError("redis-server not found: install it (Debian package redis-server)")
    api_env = _env_file(args.api_env, ".api_env")
    worker_env = _env_file(args.worker_env, ".worker_env")

    redis_port = args.redis_port or free_port()
    api_port = args.api_port or free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    api_url = f"http://{args.host}:{api_port}"
    metrics_ports = [
        (args.metrics_port + index) if args.metrics_port else free_port()
        for index in range(args.workers)
    ]
    redis_dir = stack.state_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    stack.info = {
        "api_url": api_url,
        "api_port": api_port,
        "redis_url": redis_url,
        "redis_port": redis_port,
        "workers": args.workers,
        "metrics_ports": metrics_ports,
        "api_env": str(api_env),
        "worker_env": str(worker_env),
        "logs": str(stack.logs),
    }
    try:
        stack.spawn(
            "redis",
            [redis_server, *redis_options(redis_port, redis_dir, args.appendfsync)],
            os.environ,
        )
        stack.wait_until("redis", lambda: redis_ping(redis_port), ["redis"], args.timeout)

        common = {"REDIS_URI": redis_url}
        api_vars = {**os.environ, **common, "PORT": str(api_port), "HOST": args.host}
        api_vars["JAEGER_URI"] = local_jaeger_uri(
            read_env_file(api_env).get("JAEGER_URI"), args.jaeger_uri
        )
        stack.spawn("api", [*command, "api", "--env-file", str(api_env)], api_vars)
        worker_jaeger = local_jaeger_uri(
            read_env_file(worker_env).get("JAEGER_URI"), args.jaeger_uri
        )
        for index, metrics_port in enumerate(metrics_ports, start=1):
            worker_vars = {
                **os.environ,
                **common,
                "JAEGER_URI": worker_jaeger,
                "METRICS_PORT": str(metrics_port),
            }
            stack.spawn(
                f"worker-{index}",
                [*command, "worker", "--env-file", str(worker_env)],
                worker_vars,
            )
        services = ["api", *(f"worker-{i}" for i in range(1, args.workers + 1))]
        stack.wait_until(
            f"the API ({api_url}/health)",
            lambda: http_status(f"{api_url}/health") == 200,
            services,
            args.timeout,
        )
        for name in services:  # a worker with a bad setting has exited by now
            stack.alive_or_fail(name)
    except BaseException:
        stack.stop(timeout=10.0)
        raise
    stack.save()
    return {**stack.info, "processes": stack.processes}


def down(args: argparse.Namespace) -> list[str]:
    stack = Stack(Path(args.state_dir).resolve())
    killed = stack.stop(args.timeout)
    if args.purge:
        shutil.rmtree(stack.state_dir, ignore_errors=True)
    return killed


def _env_default(name: str, default: str) -> str:
    return os.environ.get(f"LOCAL_STACK_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stack.py",
        description="Run Redis, the API and N workers as local processes (no Docker).",
    )
    commands = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    def with_state(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--state-dir",
            default=_env_default("DIR", str(DEFAULT_STATE_DIR)),
            help="PIDs, logs and Redis data (LOCAL_STACK_DIR; default deployment/local/.state)",
        )
        return sub

    start = with_state(commands.add_parser("up", help="start the stack, wait for /health"))
    start.add_argument(
        "--workers",
        type=int,
        default=int(_env_default("WORKERS", "2")),
        help="worker processes (LOCAL_STACK_WORKERS; default 2)",
    )
    start.add_argument(
        "--api-port",
        type=int,
        default=int(_env_default("API_PORT", "8080")),
        help="API port, 0 = any free one (LOCAL_STACK_API_PORT; default 8080)",
    )
    start.add_argument(
        "--redis-port",
        type=int,
        default=int(_env_default("REDIS_PORT", "0")),
        help="Redis port, 0 = any free one (LOCAL_STACK_REDIS_PORT; default 0)",
    )
    start.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env_default("METRICS_PORT", "0")),
        help="first worker's METRICS_PORT, the next ones count up; 0 = free ones "
        "(LOCAL_STACK_METRICS_PORT; default 0)",
    )
    start.add_argument(
        "--host",
        default=_env_default("HOST", "127.0.0.1"),
        help="address the API binds (LOCAL_STACK_HOST; default 127.0.0.1)",
    )
    start.add_argument(
        "--api-env",
        default=os.environ.get("LOCAL_STACK_API_ENV"),
        help="API env file (default .api_env, else .api_env.example)",
    )
    start.add_argument(
        "--worker-env",
        default=os.environ.get("LOCAL_STACK_WORKER_ENV"),
        help="worker env file (default .worker_env, else .worker_env.example)",
    )
    start.add_argument(
        "--jaeger-uri",
        default=os.environ.get("LOCAL_STACK_JAEGER_URI"),
        help="JAEGER_URI for every process, e.g. 127.0.0.1:4318 (default: the env files' "
        "value unless it names a compose host, then no export)",
    )
    start.add_argument(
        "--appendfsync",
        choices=["always", "everysec", "no"],
        default=_env_default("APPENDFSYNC", "everysec"),
        help="Redis AOF fsync policy (LOCAL_STACK_APPENDFSYNC; default everysec)",
    )
    start.add_argument(
        "--command",
        default=os.environ.get("LOCAL_STACK_COMMAND"),
        help="the ai-orchestrator command (default: beside this Python, or PATH)",
    )
    start.add_argument(
        "--redis-server",
        default=os.environ.get("LOCAL_STACK_REDIS_SERVER"),
        help="redis-server binary (default: from PATH)",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for Redis and for /health (default 60)",
    )
    start.add_argument("--json", action="store_true", help="print the recorded state as JSON")

    stop = with_state(commands.add_parser("down", help="stop the recorded processes"))
    stop.add_argument(
        "--timeout",
        type=float,
        default=40.0,
        help="seconds the services get to drain before SIGKILL (default 40)",
    )
    stop.add_argument(
        "--purge", action="store_true", help="also delete the state directory (logs and Redis data)"
    )

    status = with_state(commands.add_parser("status", help="are the recorded processes up?"))
    status.add_argument("--json", action="store_true", help="print name -> running as JSON")
    return parser


@contextlib.contextmanager
def _terminating_as_interrupt() -> Iterator[None]:
    """SIGTERM during `up` unwinds like ^C, so the processes started so far are stopped."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command_name == "up":
            with _terminating_as_interrupt():
                state = up(args)
            if args.json:
                print(json.dumps(state, indent=2))
            else:
                pids = {name: entry["pid"] for name, entry in state["processes"].items()}
                print(
                    f"stack up: API {state['api_url']} (pid {pids['api']}), "
                    f"{state['workers']} worker(s), Redis {state['redis_url']} "
                    f"(pid {pids['redis']}); logs in {state['logs']}"
                )
            return 0
        if args.command_name == "down":
            killed = down(args)
            suffix = f" (killed after the timeout: {', '.join(killed)})" if killed else ""
            print(f"stack down{suffix}")
            return 0
        running = Stack(Path(args.state_dir).resolve()).running()
        if args.json:
            print(json.dumps(running))
        else:
            for name, alive in running.items():
                print(f"{name}: {'running' if alive else 'stopped'}")
        return 0 if running and all(running.values()) else 1
    except StackError as exc:
        print(f"stack.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stack.py: interrupted; stopped what had started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
