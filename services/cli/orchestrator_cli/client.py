"""``ai-orchestrator submit``: a small client for the HTTP API."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TextIO

import aiohttp
import orjson

TERMINAL = frozenset({"succeeded", "failed"})


class ClientError(Exception):
    """The API refused the request or could not be reached; the message says why."""


def _problem_text(status: int, body: bytes) -> str:
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {status}"
    if not isinstance(problem, dict):
        return f"HTTP {status}"
    detail = problem.get("detail") or problem.get("title") or ""
    return f"HTTP {status}: {detail}".rstrip(": ")


async def _sse_events(
    response: aiohttp.ClientResponse,
) -> AsyncIterator[tuple[str | None, str, Any]]:
    """(id, event, data) of each message of a text/event-stream response."""
    event_id: str | None = None
    event, data_lines = "message", list[str]()
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data_lines:
                yield event_id, event, orjson.loads("\n".join(data_lines))
            event_id, event, data_lines = None, "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data_lines.append(value)
            elif field == "id":
                event_id = value


#: Answers worth another try: not accepted right now (503, 502/504 from a proxy), rate
#: limited (429), or the same Idempotency-Key's first request still in flight (409).
RETRYABLE = frozenset({409, 429, 502, 503, 504})
#: Tries of one request (or reconnects of one stream) in a row before giving up.
DEFAULT_TRIES = 6
#: Longest wait of our own backoff, and of a server's Retry-After (the deadline still rules).
_MAX_BACKOFF = 10.0
_MAX_RETRY_AFTER = 300.0


class _Transient(Exception):
    """A failure worth another try; ``wait`` is the server's Retry-After, if it gave one."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


def _refusal(response: aiohttp.ClientResponse, payload: bytes) -> ClientError | _Transient:
    """What an answer other than the one wanted means: worth another try (``RETRYABLE``,
    after its Retry-After), or final."""
    problem = _problem_text(response.status, payload)
    if response.status not in RETRYABLE:
        return ClientError(problem)
    return _Transient(problem, _retry_after(response))


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return None


class _Retrier:
    """Bounds the tries of one step (``tries`` in a row) and the whole command (``deadline``);
    waits between tries: the server's Retry-After, else exponential backoff from 0.25 s."""

    def __init__(self, base: str, tries: int, deadline: float) -> None:
        self.base = base
        self.tries = max(tries, 1)
        self.deadline = deadline
        self.failures = 0

    async def failed(self, why: _Transient | aiohttp.ClientError | TimeoutError) -> None:
        """Wait before the next try, or raise ``ClientError`` when none is left."""
        self.failures += 1
        wait = why.wait if isinstance(why, _Transient) else None
        if wait is None:
            wait = min(0.25 * 2 ** (self.failures - 1), _MAX_BACKOFF)
        else:
            wait = min(wait, _MAX_RETRY_AFTER)
        message = str(why) or type(why).__name__
        if isinstance(why, aiohttp.ClientError | TimeoutError):
            message = f"cannot reach {self.base}: {message}"
        if self.failures >= self.tries:
            raise ClientError(f"{message} (gave up after {self.failures} tries)")
        if time.monotonic() + wait > self.deadline:
            raise ClientError(f"{message} (out of time)")
        await asyncio.sleep(wait)

    def succeeded(self) -> None:
        self.failures = 0


async def _request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    retrier: _Retrier,
    ok: frozenset[int],
    **kwargs: Any,
) -> tuple[int, Any]:
    """``method url``, tried again on connection errors and ``RETRYABLE`` answers; the status
    and the JSON body of the first answer in ``ok``, or ``ClientError``."""
    while True:
        try:
            async with session.request(method, url, **kwargs) as response:
                payload = await response.read()
                if response.status in ok:
                    retrier.succeeded()
                    return response.status, orjson.loads(payload)
                raise _refusal(response, payload)
        except (_Transient, aiohttp.ClientError, TimeoutError) as exc:
            await retrier.failed(exc)


async def submit(
    url: str,
    api_key: str | None,
    body: dict[str, Any],
    *,
    mode: str = "submit",  # "submit" | "wait" | "stream"
    timeout: float = 600.0,
    out: TextIO = sys.stdout,
    tries: int = DEFAULT_TRIES,
) -> int:
    """Submit one task; print its id (submit), answer (wait) or streamed answer (stream).

    The submission carries a fresh ``Idempotency-Key``, so it is retried safely when the API
    cannot take it right now (503, 409, a lost connection...): up to ``tries`` times in a
    row, waiting Retry-After. Polls are retried likewise, and a stream that breaks off (an API
    restart) resumes with ``Last-Event-ID``, without repeats. Everything ends by ``timeout``.

    Returns the process exit code: 0 when the task was accepted (submit) or succeeded.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = url.rstrip("/")
    deadline = time.monotonic() + timeout
    client_timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
    retrier = _Retrier(base, tries, deadline)
    try:
        async with (
            asyncio.timeout(timeout),
            aiohttp.ClientSession(timeout=client_timeout, headers=headers) as session,
        ):
            _, task = await _request(
                session,
                "POST",
                f"{base}/v1/tasks",
                retrier,
                frozenset({200, 202}),
                json=body,
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            if mode == "submit":
                out.write(orjson.dumps(task).decode() + "\n")
                return 0
            if mode == "stream":
                return await _stream(session, base, task["id"], out, retrier)
            while task["status"] not in TERMINAL:
                await asyncio.sleep(0.2)
                _, task = await _request(
                    session, "GET", f"{base}/v1/tasks/{task['id']}", retrier, frozenset({200})
                )
            return _print_outcome(task, out)
    except TimeoutError:
        raise ClientError(f"no answer after {timeout:g}s") from None


def _print_outcome(task: dict[str, Any], out: TextIO) -> int:
    if task["status"] == "succeeded":
        out.write(task["result"]["text"] + "\n")
        return 0
    error = task.get("error") or {}
    raise ClientError(f"task {task['id']} failed: {error.get('type')}: {error.get('message')}")


async def _stream(
    session: aiohttp.ClientSession, base: str, task_id: str, out: TextIO, retrier: _Retrier
) -> int:
    """Print the task's answer as it streams, reconnecting after the last event seen."""
    last_id: str | None = None
    shown = ""  # the text of the current attempt printed so far
    while True:
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        try:
            async with session.get(
                f"{base}/v1/tasks/{task_id}/events", headers=headers
            ) as response:
                if response.status != 200:
                    raise _refusal(response, await response.read())
                async for event_id, event, data in _sse_events(response):
                    retrier.succeeded()
                    last_id = event_id if event_id is not None else last_id
                    if event == "status" and data.get("attempt", 1) > 1 and shown:
                        out.write(f"\n[attempt {data['attempt']}: starting over]\n")
                        shown = ""
                    elif event == "delta":
                        out.write(data["text"])
                        out.flush()
                        shown += data["text"]
                    elif event == "result":
                        # A fast answer may come whole, without deltas: print what was not
                        # shown.
                        text = data.get("text", "")
                        out.write((text[len(shown) :] if text.startswith(shown) else text) + "\n")
                        return 0
                    elif event == "error":
                        detail = f"{data.get('type')}: {data.get('message')}"
                        raise ClientError(f"task {task_id} failed: {detail}")
            # The stream ended before the terminal event (the API restarted): resume.
            await retrier.failed(_Transient(f"the event stream of task {task_id} broke off"))
        except (_Transient, aiohttp.ClientError, TimeoutError) as exc:
            await retrier.failed(exc)
