"""Helpers of the console's browser tests: the service they run against, a JSON client for
the API, and a page of the console."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.support import Services, clean_env, free_port, serving_in_thread

CHROMIUM = Path("/usr/bin/chromium")

KEY = "console-acme-key-0123456789"
OTHER = "console-globex-key-012345678"
ADMIN = "console-ops-key-0123456789ab"
TRACE_URL = "http://grafana.invalid/explore?trace={trace_id}"


def request_json(url: str, key: str | None = None, body: object = None) -> tuple[int, Any]:
    """``GET`` (or ``POST`` ``body``) ``url`` as ``key``: the status and the JSON answer."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def start_console_service(directory: Path, **env: str) -> tuple[Services, str]:
    """``ai-orchestrator run`` with the three tenants (``ops`` the operator) and ``env``,
    once a worker is alive: its services (stop them) and base URL."""
    services = Services(directory)
    port = free_port()
    service = services.start(
        "run",
        ["run", "--port", str(port)],
        clean_env(
            API_KEYS=f"acme:{KEY},globex:{OTHER},ops:{ADMIN}",
            ADMIN_TENANTS="ops",
            CONSOLE_TRACE_URL=TRACE_URL,
            **env,
        ),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # a hang guard
    try:
        while True:
            assert service.alive(), service.tail()
            try:
                status, health = request_json(f"{url}/health")
                if status == 200 and health["workers"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, service.tail()
            time.sleep(0.1)
    except BaseException:
        services.stop_all()
        raise
    return services, url


def wait_for(what: str, predicate: Any, timeout: float = 30.0) -> Any:
    """Poll ``predicate()`` until it returns something truthy (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Console:
    """A page of the console, with the console errors, dialogs and requests it produced."""

    def __init__(self, page: Any, base_url: str, shots: Path) -> None:
        self.page = page
        self.base_url = base_url
        self.shots = shots
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[Any] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: self.requests.append(r))

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def open(self, fragment: str = "") -> Any:
        return self.page.goto(f"{self.base_url}/console{fragment}")

    def sign_in(self, key: str = KEY) -> None:
        self.open()
        self.by("api-key").fill(key)
        self.by("sign-in").click()
        self.by("task-list").wait_for()

    def submit(self, prompt: str, parameters: dict[str, Any] | None = None) -> str:
        self.open("#/new")
        self.by("prompt").fill(prompt)
        self.by("model").fill("echo")
        if parameters is not None:
            self.by("parameters").fill(json.dumps(parameters))
        self.by("submit").click()
        self.page.wait_for_url("**/console#/task/*")
        return str(self.page.url.rsplit("/", 1)[1])

    def wait_status(self, status: str) -> None:
        self.page.wait_for_function(
            "s => document.querySelector('[data-testid=status]')?.textContent === s",
            arg=status,
        )

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


class CuttableProxy:
    """A TCP proxy on loopback in front of the API whose connections a test can cut
    (``cut()`` aborts every open one, as a network drop does); new ones go through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.url = ""
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _stop(self) -> None:
        self._abort_all()
        if self._server is not None:
            self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(handler)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), 5
            )
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        pipes = [
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer)),
        ]
        try:
            # Either side closing ends the connection (a half-open one would hang here).
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    def _abort_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()  # a reset, not a clean end: the body is cut mid-way
        self._open.clear()

    def cut(self) -> None:
        """Abort every connection open now (from the test's thread)."""
        assert self._loop is not None
        done = threading.Event()

        def abort() -> None:
            self._abort_all()
            done.set()

        self._loop.call_soon_threadsafe(abort)
        assert done.wait(5)
        self.cuts += 1

    @contextlib.contextmanager
    def running(self) -> Iterator[CuttableProxy]:
        with serving_in_thread(self._start, self._stop):
            yield self


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Ends when either side closes or is aborted (read() then returns b"" or raises).
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
