"""Benchmark (4): what a chat client waits for, through the orchestrator and without it.

A fake OpenAI-compatible provider (``tests.support.fake_llm``, in this process) answers every
call after a fixed latency, in ``chunks`` chunks ``chunk_ms`` apart. ``clients`` concurrent
clients, for ``rounds`` rounds, each with a prompt of its own (no prompt cache, no joining),
after a warm-up in which every client calls each path once (not measured):

- straight to the fake (the baseline: the provider's own time to first token and to the
  whole answer),
- ``POST /v1/chat/completions`` with ``"stream": true`` against a real ``ai-orchestrator
  api`` and ``worker`` on a throwaway redis-server (time to the first content chunk, and to
  ``[DONE]``),
- the same without ``stream`` (time to the ``chat.completion``).

The result is the orchestrator's *added* latency: each percentile of the orchestrator's
times minus the same percentile of the baseline's.

Two arrival patterns, each measured on all three paths:

- ``steady`` (the target's): the clients are concurrent but not in step, as real ones are:
  client ``i`` starts ``i / clients`` of one answer's duration in, then makes its ``rounds``
  calls back to back. At any moment about ``clients`` calls are open; arrivals are spread.
- ``burst``: every client sends at the same instant, ``rounds`` times (the next burst when
  the last call of the previous one ended). Each process then works through 100 requests at
  once, and the median request waits for about 50 others in each: this measures the burst's
  queueing (per-request CPU times the burst), printed beside the steady figures.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import attrs
import redis.asyncio

from tests.support.fake_llm import FakeLLM, Reply

from .processes import (
    CpuMeter,
    Processes,
    free_port,
    orchestrator_command,
    service_env,
    wait_http_ok,
)
from .profiles import summarize

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
    profile: bool = False  # run the api and the worker under py-spy
    extra_env: Mapping[str, str] = attrs.field(factory=dict)  # --service-env


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


Call = Callable[[int], Awaitable[Timing]]


async def _burst(config: ChatConfig, call: Call) -> list[Timing]:
    timings: list[Timing] = []
    for round_ in range(config.rounds):
        base = round_ * config.clients
        timings += await asyncio.gather(*(call(base + i) for i in range(config.clients)))
    return timings


async def _steady(config: ChatConfig, call: Call) -> list[Timing]:
    spread = (config.latency_ms + config.chunks * config.chunk_ms) / 1000

    async def client(i: int) -> list[Timing]:
        await asyncio.sleep(spread * i / config.clients)
        return [await call(round_ * config.clients + i) for round_ in range(config.rounds)]

    per_client = await asyncio.gather(*(client(i) for i in range(config.clients)))
    return [timing for timings in per_client for timing in timings]


ARRIVALS: dict[str, Callable[[ChatConfig, Call], Awaitable[list[Timing]]]] = {
    "steady": _steady,
    "burst": _burst,
}


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
        env = service_env(redis.url, config.extra_env)
        api = processes.start(
            "api",
            [*orchestrator_command(), "api", "--host", "127.0.0.1", "--port", str(port)],
            {**env, "API_KEYS": f"bench:{_KEY}"},
            profile=config.profile,
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
            profile=config.profile,
        )
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_http_ok, f"{base}/health", config.startup_timeout, api)
        run_id = secrets.token_hex(4)
        headers = {"Authorization": f"Bearer {_KEY}"}
        direct = f"{fake.openai_base_url}/chat/completions"
        ours = f"{base}/v1/chat/completions"

        def body(index: int, *, stream: bool, arrivals: str) -> dict[str, Any]:
            content = f"question {run_id} {arrivals} {index} {'s' if stream else 'w'}"
            return {
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": content}],
                "stream": stream,
            }

        timeout = aiohttp.ClientTimeout(total=config.timeout)
        limits = aiohttp.TCPConnector(limit=config.clients * 2)
        measured: dict[str, dict[str, Any]] = {}
        assert redis.process is not None
        pids = {
            "api": api.pid,
            "worker": worker.pid,
            "harness": os.getpid(),  # the clients and the fake provider
            "redis": redis.process.pid,
        }
        async with aiohttp.ClientSession(timeout=timeout, connector=limits) as session:
            # Warm-up, not measured: every client makes one call through each path, which
            # opens the connections the run uses (the clients' to the API and to the fake,
            # the worker's to the provider) and takes the services past their start-up.
            async def warm(i: int) -> None:
                request = body(i, stream=True, arrivals="warm")
                await _sse(session, direct, {**request, "model": "gpt-4o-mini"})
                await _sse(session, ours, request, headers=headers)
                await _whole(session, ours, body(i, stream=False, arrivals="warm"), headers=headers)

            await asyncio.gather(*(warm(i) for i in range(config.clients)))
            gc.collect()  # the warm-up's garbage, not the first measured calls'
            await asyncio.sleep(1.0)  # and the services done with it
            for name, arrive in ARRIVALS.items():

                def direct_call(i: int, name: str = name) -> Awaitable[Timing]:
                    request = {**body(i, stream=True, arrivals=name), "model": "gpt-4o-mini"}
                    return _sse(session, direct, request)

                def streamed_call(i: int, name: str = name) -> Awaitable[Timing]:
                    request = body(i, stream=True, arrivals=name)
                    return _sse(session, ours, request, headers=headers)

                def whole_call(i: int, name: str = name) -> Awaitable[Timing]:
                    request = body(i, stream=False, arrivals=name)
                    return _whole(session, ours, request, headers=headers)

                paths = {"direct": direct_call, "streamed": streamed_call, "whole": whole_call}
                timings: dict[str, list[Timing]] = {}
                cpu: dict[str, dict[str, float]] = {}
                commands: dict[str, dict[str, float]] = {}
                for path, call in paths.items():
                    meter = CpuMeter(pids)
                    before = await _commandstats(redis.url)
                    meter.start()
                    timings[path] = await arrive(config, call)
                    used = meter.stop()
                    after = await _commandstats(redis.url)
                    commands[path] = {
                        name: round((count - before.get(name, 0)) / len(timings[path]), 2)
                        for name, count in sorted(after.items())
                        if count - before.get(name, 0) >= len(timings[path]) / 10
                    }
                    cpu[path] = {
                        process: round(figures["cpu_seconds"] * 1e6 / len(timings[path]))
                        for process, figures in used.items()
                    }
                measured[name] = {
                    **_figures(timings["direct"], timings["streamed"], timings["whole"]),
                    "cpu_us_per_call": cpu,
                    "redis_commands_per_call": commands,
                }
        alive = api.alive() and worker.alive()
        profiles: dict[str, Any] = {}
        if config.profile:  # py-spy writes its profile when the program exits
            for service in (api, worker):
                processes.stop(service)
                if service.profile is not None and service.profile.exists():
                    profiles[f"profile_{service.name}"] = summarize(service.profile)
    finally:
        await fake.close()
    steady = measured["steady"]
    first_added = steady["added_to_first_token_ms"]
    whole_added = steady["added_to_non_streamed_answer_ms"]
    return {
        "status": "complete" if alive else "incomplete",
        "clients": config.clients,
        "rounds": config.rounds,
        "provider": {
            "latency_ms": config.latency_ms,
            "chunks": config.chunks,
            "chunk_ms": config.chunk_ms,
        },
        "arrivals": "steady (the figures here); burst below",
        **steady,
        "burst": measured["burst"],
        **profiles,
        "target": {
            "arrivals": "steady",
            "added_first_token_p50_ms": "<= 15",
            "added_non_streamed_p50_ms": "<= 5",
            "met": alive and first_added["p50"] <= 15 and whole_added["p50"] <= 5,
        },
    }


async def _commandstats(url: str) -> dict[str, int]:
    """The redis-server's calls so far, by command (``INFO commandstats``)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _figures(baseline: list[Timing], streamed: list[Timing], whole: list[Timing]) -> dict[str, Any]:
    provider = _summary(baseline)
    stream = _summary(streamed)
    complete = _summary(whole)

    def added(ours_ms: dict[str, float], theirs_ms: dict[str, float]) -> dict[str, float]:
        return {q: round(ours_ms[q] - theirs_ms[q], 2) for q in ("p50", "p99")}

    return {
        "provider_direct_ms": provider,
        "streamed_ms": stream,
        "non_streamed_ms": complete,
        "added_to_first_token_ms": added(stream["first"], provider["first"]),
        "added_to_stream_end_ms": added(stream["total"], provider["total"]),
        "added_to_non_streamed_answer_ms": added(complete["total"], provider["total"]),
    }
