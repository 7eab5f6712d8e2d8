"""Helpers for the end-to-end tests: service processes, and a small HTTP client for the API.

Everything here talks to real processes over loopback: ``ai-orchestrator api|worker|run``
subprocesses started with an explicit environment (never the developer's ``REDIS_URI``, so
nothing can reach the machine's shared Redis), stopped by PID at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson

from tests.support.settings_names import service_variables

ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = ROOT / "deployment" / "local" / "stack.py"


def _command() -> str:
    beside = Path(sys.executable).parent / "ai-orchestrator"
    if beside.exists():
        return str(beside)
    found = shutil.which("ai-orchestrator")
    if found is None:
        raise RuntimeError("ai-orchestrator is not installed in the test environment")
    return found


#: The console script of the interpreter running the tests.
AI_ORCHESTRATOR = _command()

#: Variables the services (and the CLI's client) read: never inherited from the developer's
#: shell. Found by reading the settings classes, so a new setting is never missed.
_SERVICE_VARIABLES = service_variables() | {"ORCHESTRATOR_URL", "ORCHESTRATOR_API_KEY"}


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without any service setting or ``OTEL_*``, plus
    ``overrides``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _SERVICE_VARIABLES
        and not name.startswith(("OTEL_", "LOCAL_STACK_", "PYTEST_"))
    }
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving_in_thread(
    start: Callable[[], Awaitable[object]],
    stop: Callable[[], Awaitable[object]],
    *,
    timeout: float = 10.0,
) -> Iterator[None]:
    """Run an asyncio server (``start()`` ... ``stop()``) on a private loop in a daemon thread
    for the ``with`` block: for module-scoped fixtures, which outlive each test's loop."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(stop())
        loop.close()

    thread = threading.Thread(target=serve, name="e2e-server", daemon=True)
    thread.start()
    if not ready.wait(timeout) or failure:
        raise RuntimeError(f"server did not start: {failure}")
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


# ---- processes ----------------------------------------------------------------------------


@attrs.define
class Service:
    """One ``ai-orchestrator`` subprocess; stdout and stderr go to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL (the crash case) and reap."""
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def wait_exit(self, timeout: float) -> int:
        """The exit status, waiting up to ``timeout`` seconds (TimeoutError after)."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} (pid {self.pid}) still running after {timeout}s")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; always reaps the process."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)


class Services:
    """Starts ``ai-orchestrator`` subprocesses and stops every one of them (by PID) at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Service] = []

    def start(self, name: str, args: Iterable[str], env: Mapping[str, str]) -> Service:
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [AI_ORCHESTRATOR, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=ROOT,
            )
        service = Service(name, process, log_path)
        self.started.append(service)
        return service

    def api(self, env: Mapping[str, str], *, name: str = "api") -> Service:
        """An API on a free loopback port (``service.url``); wait with ``wait_healthy``."""
        port = free_port()
        service = self.start(name, ["api"], {**env, "HOST": "127.0.0.1", "PORT": str(port)})
        service.url = f"http://127.0.0.1:{port}"
        return service

    def worker(self, env: Mapping[str, str], *, name: str = "worker") -> Service:
        return self.start(name, ["worker"], env)

    def stop_all(self) -> None:
        for service in reversed(self.started):
            try:
                service.stop()
            except Exception:  # keep stopping the others; a stuck one was SIGKILLed
                with contextlib.suppress(Exception):
                    service.kill()

    def logs(self) -> str:
        """Every service's log tail, for assertion messages."""
        return "\n".join(f"--- {s.name} (pid {s.pid})\n{s.tail()}" for s in self.started)


async def wait_healthy(
    session: aiohttp.ClientSession, service: Service, *, timeout: float = 60.0
) -> None:
    """Poll ``GET /health`` until 200; fails at once if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not service.alive():
            raise AssertionError(f"{service.name} exited early:\n{service.tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(
                f"{service.url}/health", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise AssertionError(f"{service.name} not healthy after {timeout}s:\n{service.tail()}")
        await asyncio.sleep(0.1)


async def wait_until(what: str, predicate: Any, *, timeout: float, interval: float = 0.1) -> None:
    """Poll the (sync or async) ``predicate`` until it is truthy; AssertionError after
    ``timeout`` seconds (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout}s")
        await asyncio.sleep(interval)


# ---- the HTTP API -------------------------------------------------------------------------

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"result", "error"})


@attrs.frozen
class Event:
    """One SSE message or WebSocket frame."""

    id: str
    event: str
    data: dict[str, Any]


class ApiError(AssertionError):
    """The API answered something a test did not expect."""


@attrs.define
class Api:
    """A tenant's view of one API: ``base`` URL, bearer ``key``."""

    session: aiohttp.ClientSession
    base: str
    key: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    async def post_task(
        self,
        prompt: str,
        *,
        model: str = "echo",
        timeout: float = 30.0,
        priority: str | None = None,
        **parameters: Any,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """``POST /v1/tasks`` (the echo model unless told): (status, headers, JSON body)."""
        body: dict[str, Any] = {"prompt": prompt, "model": model}
        if priority is not None:
            body["priority"] = priority
        if parameters:
            body["parameters"] = parameters
        async with self.session.post(
            f"{self.base}/v1/tasks",
            json=body,
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            payload = await response.read()
            return response.status, dict(response.headers), orjson.loads(payload or b"null")

    async def submit(self, prompt: str, **parameters: Any) -> dict[str, Any]:
        """Submit and expect ``202``; the task as answered."""
        status, _, body = await self.post_task(prompt, **parameters)
        if status != 202:
            raise ApiError(f"POST /v1/tasks answered {status}: {body}")
        return body

    async def get(self, task_id: str, *, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        async with self.session.get(
            f"{self.base}/v1/tasks/{task_id}",
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            return response.status, orjson.loads(await response.read() or b"null")

    async def wait_done(self, task_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Poll until the task is terminal (bounded); the final task."""
        deadline = time.monotonic() + timeout
        while True:
            status, task = await self.get(task_id)
            if status != 200:
                raise ApiError(f"GET /v1/tasks/{task_id} answered {status}: {task}")
            if task["status"] in TERMINAL_STATUSES:
                return task
            if time.monotonic() > deadline:
                raise ApiError(f"task {task_id} not finished after {timeout}s: {task}")
            await asyncio.sleep(0.1)

    async def wait_all(
        self, task_ids: Iterable[str], *, timeout: float, concurrency: int = 32
    ) -> dict[str, dict[str, Any]]:
        """Poll many tasks in rounds until every one is terminal (bounded)."""
        pending = list(task_ids)
        done: dict[str, dict[str, Any]] = {}
        limit = asyncio.Semaphore(concurrency)
        deadline = time.monotonic() + timeout

        async def look(task_id: str) -> None:
            async with limit:
                status, task = await self.get(task_id)
            if status != 200:
                raise ApiError(f"GET /v1/tasks/{task_id} answered {status}: {task}")
            if task["status"] in TERMINAL_STATUSES:
                done[task_id] = task

        while pending:
            await asyncio.gather(*(look(task_id) for task_id in pending))
            pending = [task_id for task_id in pending if task_id not in done]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise ApiError(f"{len(pending)} task(s) not finished after {timeout}s")
            await asyncio.sleep(0.3)
        return done

    async def sse(
        self,
        task_id: str,
        *,
        last_event_id: str | None = None,
        stop_after: int | None = None,
        timeout: float = 60.0,
    ) -> list[Event]:
        """Read the task's SSE stream until it ends (or ``stop_after`` events, then hang up)."""
        events: list[Event] = []
        async with contextlib.aclosing(
            self.sse_stream(task_id, last_event_id=last_event_id, timeout=timeout)
        ) as stream:
            async for event in stream:
                events.append(event)
                if stop_after is not None and len(events) >= stop_after:
                    break
        return events

    async def sse_stream(
        self, task_id: str, *, last_event_id: str | None = None, timeout: float = 60.0
    ) -> AsyncGenerator[Event, None]:
        headers = dict(self.headers)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        async with self.session.get(
            f"{self.base}/v1/tasks/{task_id}/events",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            if response.status != 200:
                raise ApiError(f"events of {task_id} answered {response.status}")
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for event in parse_sse(response.content):
                yield event

    async def ws(
        self, task_id: str, *, last_event_id: str | None = None, timeout: float = 60.0
    ) -> list[Event]:
        """Read the task's WebSocket frames until the server closes it."""
        url = f"{self.base}/v1/tasks/{task_id}/ws"
        if last_event_id is not None:
            url += f"?last_event_id={last_event_id}"
        frames: list[Event] = []
        async with (
            asyncio.timeout(timeout),
            self.session.ws_connect(url, headers=self.headers) as ws,
        ):
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    frame = orjson.loads(message.data)
                    frames.append(Event(frame["id"], frame["event"], frame["data"]))
                elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                    break
        return frames


async def parse_sse(content: aiohttp.StreamReader) -> AsyncGenerator[Event, None]:
    """The ``id``/``event``/``data`` messages of a ``text/event-stream`` body."""
    event_id, name, data_lines = "", "message", list[str]()
    async for raw in content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data_lines:
                yield Event(event_id, name, orjson.loads("\n".join(data_lines)))
            name, data_lines = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = value
        elif field == "event":
            name = value
        elif field == "data":
            data_lines.append(value)


def final_attempt_text(events: Iterable[Event]) -> str:
    """The concatenated ``delta`` text of the last attempt seen (earlier attempts discarded)."""
    attempt, text = 0, ""
    for event in events:
        event_attempt = int(event.data.get("attempt", 0))
        if event_attempt > attempt:
            attempt, text = event_attempt, ""
        if event.event == "delta" and event_attempt == attempt:
            text += event.data["text"]
    return text


def prompt_of(index: int, words: int = 1) -> str:
    """A distinct prompt (``words`` words long)."""
    return " ".join(f"task-{index}-word-{n}" for n in range(words))
