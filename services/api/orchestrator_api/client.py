"""``ai-orchestrator submit``: a small client for the HTTP API."""

from __future__ import annotations

import asyncio
import sys
import time
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


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) pairs of a text/event-stream response."""
    event, data_lines = "message", list[str]()
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data_lines:
                yield event, orjson.loads("\n".join(data_lines))
            event, data_lines = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data_lines.append(value)


async def submit(
    url: str,
    api_key: str | None,
    body: dict[str, Any],
    *,
    mode: str = "submit",  # "submit" | "wait" | "stream"
    timeout: float = 600.0,
    out: TextIO = sys.stdout,
) -> int:
    """Submit one task; print its id (submit), answer (wait) or streamed answer (stream).

    Returns the process exit code: 0 when the task was accepted (submit) or succeeded.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = url.rstrip("/")
    deadline = time.monotonic() + timeout
    client_timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
    try:
        async with aiohttp.ClientSession(timeout=client_timeout, headers=headers) as session:
            async with session.post(f"{base}/v1/tasks", json=body) as response:
                payload = await response.read()
                if response.status not in (200, 202):
                    raise ClientError(_problem_text(response.status, payload))
                task = orjson.loads(payload)
            if mode == "submit":
                out.write(orjson.dumps(task).decode() + "\n")
                return 0
            if mode == "stream":
                return await _stream(session, base, task["id"], out)
            while task["status"] not in TERMINAL:
                if time.monotonic() > deadline:
                    raise ClientError(f"task {task['id']} not finished after {timeout:.0f}s")
                await asyncio.sleep(0.2)
                async with session.get(f"{base}/v1/tasks/{task['id']}") as response:
                    payload = await response.read()
                    if response.status != 200:
                        raise ClientError(_problem_text(response.status, payload))
                    task = orjson.loads(payload)
            return _print_outcome(task, out)
    except aiohttp.ClientError as exc:
        raise ClientError(f"cannot reach {base}: {exc}") from exc


def _print_outcome(task: dict[str, Any], out: TextIO) -> int:
    if task["status"] == "succeeded":
        out.write(task["result"]["text"] + "\n")
        return 0
    error = task.get("error") or {}
    raise ClientError(f"task {task['id']} failed: {error.get('type')}: {error.get('message')}")


async def _stream(session: aiohttp.ClientSession, base: str, task_id: str, out: TextIO) -> int:
    async with session.get(f"{base}/v1/tasks/{task_id}/events") as response:
        if response.status != 200:
            raise ClientError(_problem_text(response.status, await response.read()))
        shown = ""  # the text of the current attempt printed so far
        async for event, data in _sse_events(response):
            if event == "status" and data.get("attempt", 1) > 1 and shown:
                out.write(f"\n[attempt {data['attempt']}: starting over]\n")
                shown = ""
            elif event == "delta":
                out.write(data["text"])
                out.flush()
                shown += data["text"]
            elif event == "result":
                # A fast answer may come whole, without deltas: print what was not shown.
                text = data.get("text", "")
                out.write((text[len(shown) :] if text.startswith(shown) else text) + "\n")
                return 0
            elif event == "error":
                detail = f"{data.get('type')}: {data.get('message')}"
                raise ClientError(f"task {task_id} failed: {detail}")
    raise ClientError(f"event stream of task {task_id} ended before its result")
