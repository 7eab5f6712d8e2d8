"""``ai-orchestrator batch submit FILE.jsonl``: upload a JSONL file of chat completion
requests, start a batch of it, and with ``--wait`` follow it (a progress bar on a terminal)
and write its output (``--output``) and error (``--errors``) files."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson

__all__ = ["BatchError", "progress_bar", "submit_batch"]

_FINISHED = frozenset({"completed", "failed", "expired", "cancelled"})
_BAR = 30


class BatchError(Exception):
    """The API refused a request or could not be reached; the message says why."""


def progress_bar(batch: dict[str, Any]) -> str:
    """One line: ``[#####.....] 40/100 done (3 failed) in_progress``."""
    counts = batch.get("request_counts") or {}
    total, completed, failed = (counts.get(k, 0) for k in ("total", "completed", "failed"))
    done = completed + failed
    filled = _BAR * done // total if total else 0
    bar = "#" * filled + "." * (_BAR - filled)
    return f"[{bar}] {done}/{total} done ({failed} failed) {batch.get('status')}"


async def _json(response: aiohttp.ClientResponse) -> Any:
    payload = await response.read()
    if response.status != 200:
        try:
            message = orjson.loads(payload)["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = payload[:200].decode(errors="replace")
        raise BatchError(f"HTTP {response.status}: {message}")
    return orjson.loads(payload)


async def _download(session: aiohttp.ClientSession, base: str, file_id: str, path: Path) -> None:
    async with session.get(f"{base}/v1/files/{file_id}/content") as response:
        if response.status != 200:
            await _json(response)
        with path.open("wb") as out:
            async for chunk in response.content.iter_chunked(256 * 1024):
                out.write(chunk)


async def submit_batch(
    url: str,
    api_key: str | None,
    path: Path,
    *,
    wait: bool,
    output: Path | None,
    errors: Path | None,
    out: TextIO,
    progress: TextIO,
    poll: float = 1.0,
    timeout: float = 86_400.0,
) -> int:
    """Upload ``path``, create the batch, print its id; with ``wait``, follow it to its end
    (exit 0 when ``completed``, else 1) and write the files asked for."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            with path.open("rb") as source:  # streamed from disk, not read whole
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", source, filename=path.name)
                async with session.post(f"{base}/v1/files", data=form) as response:
                    uploaded = await _json(response)
            body = {
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
            async with session.post(f"{base}/v1/batches", json=body) as response:
                batch = await _json(response)
            out.write(f"{batch['id']}\n")
            out.flush()
            if not wait:
                return 0
            tty = progress.isatty()
            deadline = time.monotonic() + timeout
            shown = ""
            while True:
                async with session.get(f"{base}/v1/batches/{batch['id']}") as response:
                    batch = await _json(response)
                line = progress_bar(batch)
                if tty:
                    progress.write(f"\r{line}")
                    progress.flush()
                elif line != shown and batch["status"] in _FINISHED:
                    progress.write(f"{line}\n")
                shown = line
                if batch["status"] in _FINISHED:
                    break
                if time.monotonic() > deadline:
                    raise BatchError(f"batch {batch['id']} still {batch['status']} (out of time)")
                await asyncio.sleep(poll)
            if tty:
                progress.write("\n")
            for file_id, target in (
                (batch.get("output_file_id"), output),
                (batch.get("error_file_id"), errors),
            ):
                if file_id and target is not None:
                    await _download(session, base, file_id, target)
    except aiohttp.ClientError as exc:
        raise BatchError(f"cannot reach {base}: {exc}") from exc
    return 0 if batch["status"] == "completed" else 1
