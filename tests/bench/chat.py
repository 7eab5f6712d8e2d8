"""Benchmark (4): what a chat client waits for, through the orchestrator and without it.

A fake OpenAI-compatible provider (``tests.support.fake_llm``, in this process) answers every
call after a fixed latency, in ``chunks`` chunks ``chunk_ms`` apart. ``clients`` concurrent
clients, for ``rounds`` rounds, each with a prompt of its own (no prompt cache, no joining):

- straight to the fake (the baseline: the provider's own time to first token and to the
  whole answer),
- ``POST /v1/chat/completions`` with ``"stream": true`` against a real ``ai-orchestrator
  api`` and ``worker`` on a throwaway redis-server (time to the first content chunk, and to
  ``[DONE]``),
- the same without ``stream`` (time to the ``chat.completion``).

The result is the orchestrator's *added* latency: each percentile of the orchestrator's
times minus the same percentile of the baseline's.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import attrs

from tests.support.fake_llm import FakeLLM, Reply

from .processes import Processes, free_port, orchestrator_command, service_env, wait_http_ok

__all__ = ["ChatConfig", "run_chat"]

_KEY = "bench-chat-key"


@attrs.frozen
class ChatConfig:
    clients: int = 100
    rounds: int = 5
    latency_ms: float = 200.0
    chunks: int = 10
    chunk_ms: float = 20.0
    timeout: float = 120.0
    startup_timeout: float = 30.0


@attrs.frozen
class Timing:
    first: float  # seconds to the first content (the whole answer when not streamed)
    total: float  # seconds to the end of the answer


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summary(timings: list[Timing]) -> dict[str, dict[str, float]]:
    def ms(values: list[float]) -> dict[str, float]:
        return {
            "p50": round(_percentile(values, 0.50) * 1000, 2),
            "p99": round(_percentile(values, 0.99) * 1000, 2),
        }

    return {"first": ms([t.first for t in timings]), "total": ms([t.total for t in timings])}


async def _sse(session: aiohttp.ClientSession, url: str, body: dict[str, Any], **kw: Any) -> Timing:
    start = time.perf_counter()
    first: float | None = None
    async with session.post(url, json=body, **kw) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            if first is None and b'"content":"' in data and b'"content":""' not in data:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    return Timing(first if first is not None else total, total)


async def _whole(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], **kw: Any
) -> Timing:
    start = time.perf_counter()
    async with session.post(url, json=body, **kw) as response:
        response.raise_for_status()
        await response.read()
    total = time.perf_counter() - start
    return Timing(total, total)


async def _rounds(config: ChatConfig, call: Callable[[int], Awaitable[Timing]]) -> list[Timing]:
    timings: list[Timing] = []
    for round_ in range(config.rounds):
        base = round_ * config.clients
        timings += await asyncio.gather(*(call(base + i) for i in range(config.clients)))
    return timings


def run_chat(processes: Processes, config: ChatConfig) -> dict[str, Any]:
    """Start the services, measure, and return the numbers (see the module docstring)."""
    return asyncio.run(_run(processes, config))


async def _run(processes: Processes, config: ChatConfig) -> dict[str, Any]:
    fake = FakeLLM()
    fake.default = Reply(
        chunks=tuple(f"word{i} " for i in range(config.chunks)),
        delay=config.latency_ms / 1000,
        chunk_delay=config.chunk_ms / 1000,
    )
    await fake.start()
    try:
        redis = processes.redis()
        port = free_port()
        env = service_env(redis.url)
        api = processes.start(
            "api",
            [*orchestrator_command(), "api", "--host", "127.0.0.1", "--port", str(port)],
            {**env, "API_KEYS": f"bench:{_KEY}"},
        )
        worker = processes.start(
            "worker",
            [*orchestrator_command(), "worker"],
            {
                **env,
                "NUMBER_OF_WORKERS": str(max(config.clients * 2, 10)),
                "METRICS_PORT": "0",
                "OPENAI_BASE_URL": fake.openai_base_url,
                "OPENAI_API_KEY": "sk-bench",
            },
        )
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_http_ok, f"{base}/health", config.startup_timeout, api)
        run_id = secrets.token_hex(4)
        headers = {"Authorization": f"Bearer {_KEY}"}
        direct = f"{fake.openai_base_url}/chat/completions"
        ours = f"{base}/v1/chat/completions"

        def body(index: int, *, stream: bool) -> dict[str, Any]:
            content = f"question {run_id} {index} {'s' if stream else 'w'}"
            return {
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": content}],
                "stream": stream,
            }

        timeout = aiohttp.ClientTimeout(total=config.timeout)
        limits = aiohttp.TCPConnector(limit=config.clients * 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=limits) as session:
            # Warm-up: connections, the worker's provider session, the API's paths.
            await _sse(session, ours, body(-1, stream=True), headers=headers)
            baseline = await _rounds(
                config,
                lambda i: _sse(session, direct, {**body(i, stream=True), "model": "gpt-4o-mini"}),
            )
            streamed = await _rounds(
                config, lambda i: _sse(session, ours, body(i, stream=True), headers=headers)
            )
            whole = await _rounds(
                config, lambda i: _whole(session, ours, body(i, stream=False), headers=headers)
            )
        alive = api.alive() and worker.alive()
    finally:
        await fake.close()
    provider = _summary(baseline)
    stream = _summary(streamed)
    complete = _summary(whole)

    def added(ours_ms: dict[str, float], theirs_ms: dict[str, float]) -> dict[str, float]:
        return {q: round(ours_ms[q] - theirs_ms[q], 2) for q in ("p50", "p99")}

    first_added = added(stream["first"], provider["first"])
    whole_added = added(complete["total"], provider["total"])
    return {
        "status": "complete" if alive else "incomplete",
        "clients": config.clients,
        "rounds": config.rounds,
        "provider": {
            "latency_ms": config.latency_ms,
            "chunks": config.chunks,
            "chunk_ms": config.chunk_ms,
        },
        "provider_direct_ms": provider,
        "streamed_ms": stream,
        "non_streamed_ms": complete,
        "added_to_first_token_ms": first_added,
        "added_to_stream_end_ms": added(stream["total"], provider["total"]),
        "added_to_non_streamed_answer_ms": whole_added,
        "target": {
            "added_first_token_p50_ms": "<= 15",
            "added_non_streamed_p50_ms": "<= 5",
            "met": alive and first_added["p50"] <= 15 and whole_added["p50"] <= 5,
        },
    }
