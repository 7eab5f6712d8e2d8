"""Benchmark (3): ``POST /v1/tasks`` requests/s and latency against ONE API process.

The API is a real ``ai-orchestrator api`` subprocess on a throwaway redis-server, with
authentication on (``API_KEYS``), pinned to the first CPU. The load comes from a separate
process pinned to the second CPU (with the redis-server): ``wrk`` with ``wrk_post.lua`` when
installed, else ``python -m tests.bench.loadgen``. Nothing drains the tasks stream; it just
grows for the length of the run. Tracing is off, unless ``tracing`` (a sampling ratio) has
the API export its spans to an OTLP sink process on the second CPU too (``tracing.py``).

Every request of a run sends the same prompt; the ``case`` says what the API does with it
(``CASES``). ``join`` and ``hit`` are what the prompt cache, on by default, makes of
identical prompts: they must cost no more than ``publish``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
from redis.asyncio import Redis

from orchestrator_broker import Message, RedisStreamsBroker
from orchestrator_tasks import RESULTS_STREAM, EventKind, ResultEvent, Usage, encode_event

from .processes import (
    BenchError,
    CpuMeter,
    Processes,
    Service,
    bench_module_env,
    free_port,
    orchestrator_command,
    pin,
    service_env,
    usable_cpus,
    wait_http_ok,
)
from .tracing import SinkWindow, sink_env, start_sink

__all__ = ["CASES", "HttpConfig", "HttpRun", "choose_loadgen", "run_http"]

WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
_SUMMARY = re.compile(rb"^BENCH_JSON (.*)$", re.MULTILINE)

#: What each request of a case does (the load generators read the case from ``BENCH_CASE``).
CASES = {
    "publish": '"cache": false: each request stores its task and publishes it',
    "join": "prompt cache on, nothing drains the tasks stream: each request joins the first "
    "task, still in flight (those sent before it was published run alone)",
    "hit": "prompt cache on, after the first task succeeded (the harness plays its worker): "
    "each request is a cache hit",
}
#: The prompt every request sends (``wrk_post.lua`` and ``loadgen.py`` send the same).
PROMPT = "Hello, orchestrator! Echo this back, word by word."


@attrs.frozen
class HttpConfig:
    duration: float
    warmup: float
    connections: int = 64
    loadgen: str = "auto"  # "wrk", "python" or "auto" (wrk if installed)
    startup_timeout: float = 30.0
    profile: bool = False
    extra_env: Mapping[str, str] = attrs.field(factory=dict)  # e.g. OTEL_TRACES_SAMPLER
    tracing: float | None = None  # sampling ratio: export spans to a sink (never when bare)
    bare: bool = False  # run tests.bench.bare_api instead: the calibration point
    case: str = "publish"  # one of CASES (the bare API answers every case alike)

    @property
    def name(self) -> str:
        """The run's processes and logs are named after it: ``api-join``, ``redis-join``."""
        return "bare" if self.bare else self.case


@attrs.define
class HttpRun:
    complete: bool
    loadgen: dict[str, Any]
    cpu: dict[str, dict[str, float]]
    pinning: dict[str, list[int] | None]
    stream_length: int
    error: str | None = None
    api_profile: str | None = None
    otlp_sink: dict[str, Any] | None = None  # SinkWindow's counts when tracing

    @property
    def requests_per_second(self) -> float:
        seconds = float(self.loadgen.get("duration_s") or 0.0)
        return int(self.loadgen.get("requests") or 0) / seconds if seconds else 0.0


def choose_loadgen(wanted: str) -> str:
    """``wrk`` or ``python``; ``auto`` takes ``wrk`` when it is on ``PATH``."""
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if wanted == "wrk" and shutil.which("wrk") is None:
        raise BenchError("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    if wanted not in ("wrk", "python"):
        raise BenchError(f"unknown load generator {wanted!r}")
    return wanted


def run_http(processes: Processes, config: HttpConfig) -> HttpRun:
    """Start redis + the API, warm up, measure; the processes stop with ``processes``."""
    tool = choose_loadgen(config.loadgen)
    if config.case not in CASES:
        raise BenchError(f"unknown case {config.case!r} (one of {', '.join(CASES)})")
    cpus = usable_cpus()
    api_cpus = {cpus[0]} if len(cpus) >= 2 else None
    load_cpus = {cpus[1]} if len(cpus) >= 2 else None
    redis = processes.redis(f"redis-{config.name}")
    assert redis.process is not None
    if load_cpus:
        pin(redis.process.pid, load_cpus)
    window, traced = None, {}
    if config.tracing is not None and not config.bare:
        window = SinkWindow(start_sink(processes, load_cpus, config.startup_timeout))
        traced = sink_env(window.sink.port, config.tracing)
    key = secrets.token_urlsafe(24)
    port = free_port()
    env = service_env(
        redis.url,
        {
            "API_KEYS": f"bench:{key}",
            "APP_ID": "bench-api",
            "SHUTDOWN_GRACE_SECONDS": "1",
            **traced,
            **config.extra_env,
        },
    )
    if config.bare:
        command = [sys.executable, "-m", "tests.bench.bare_api", "--port", str(port)]
        api = processes.start("bare-api", command, bench_module_env(env), cpus=api_cpus)
    else:
        command = [*orchestrator_command(), "api", "--host", "127.0.0.1", "--port", str(port)]
        api = processes.start(
            f"api-{config.case}", command, env, cpus=api_cpus, profile=config.profile
        )
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{base}/health", config.startup_timeout, api)
    if api_cpus:
        pin(api.pid, api_cpus)  # again: threads started since launch
    url = f"{base}/v1/tasks"
    if config.case == "hit" and not config.bare:
        try:
            asyncio.run(_fill_cache(url, key, redis.url, config.startup_timeout))
        except (OSError, ValueError, aiohttp.ClientError, BenchError) as exc:
            return _failed(api, f"could not fill the cache: {exc}", redis.url, api_cpus, load_cpus)
    if config.warmup > 0:
        warm = _load(processes, tool, url, key, config, config.warmup, load_cpus, "warmup")
        if warm is None or not api.alive():
            return _failed(api, "warm-up load produced no summary", redis.url, api_cpus, load_cpus)
    pids = {"api": api.pid, "redis-server": redis.process.pid}
    if window is not None:
        pids["otlp-sink"] = window.sink.service.pid
        window.start()
    meter = CpuMeter(pids)
    meter.start()
    summary = _load(processes, tool, url, key, config, config.duration, load_cpus, "load")
    cpu = meter.stop()
    if window is not None:
        window.stop()
    if summary is None:
        return _failed(
            api, "the load generator produced no summary", redis.url, api_cpus, load_cpus
        )
    stream_length = asyncio.run(_xlen(redis.url))
    processes.stop(api)  # it flushes its last spans as it stops
    errors = summary.get("errors", {})
    error = None
    if not api.alive() and api.process.returncode not in (0, None):
        error = f"the API exited with {api.process.returncode}"
    elif sum(errors.values()) and not summary.get("requests"):
        error = f"no successful request: {errors}"
    return HttpRun(
        complete=error is None,
        loadgen=summary,
        cpu=cpu,
        pinning=_pinning(api_cpus, load_cpus),
        stream_length=stream_length,
        error=error,
        api_profile=str(api.profile) if api.profile else None,
        otlp_sink=window.finish() if window is not None else None,
    )


def _pinning(api: set[int] | None, load: set[int] | None) -> dict[str, list[int] | None]:
    return {
        "api": sorted(api) if api else None,
        "loadgen_and_redis": sorted(load) if load else None,
    }


def _failed(
    api: Service, why: str, redis_url: str, api_cpus: set[int] | None, load_cpus: set[int] | None
) -> HttpRun:
    if not api.alive():
        why += f"; the API exited:\n{api.log_tail()}"
    return HttpRun(False, {}, {}, _pinning(api_cpus, load_cpus), 0, error=why)


async def _fill_cache(url: str, key: str, redis_url: str, timeout: float) -> None:
    """Submit the prompt once and answer it as a worker would (a ``succeeded`` result event
    on the results stream), then wait until the API shows it succeeded: the prompt's answer
    is cached from then on."""
    headers = {"Authorization": f"Bearer {key}"}
    limit = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(headers=headers, timeout=limit) as session:
        async with session.post(url, json={"prompt": PROMPT, "model": "echo"}) as response:
            response.raise_for_status()
            task = await response.json()
        ended = ResultEvent(
            task_id=task["id"],
            tenant="bench",
            kind=EventKind.SUCCEEDED,
            attempt=1,
            seq=0,
            at=time.time(),
            text=PROMPT,
            provider="echo",
            model="echo",
            usage=Usage(input_tokens=9, output_tokens=9),
            finish_reason="stop",
        )
        broker = RedisStreamsBroker.from_url(redis_url)
        try:
            await broker.publish(RESULTS_STREAM, Message(payload=encode_event(ended)))
        finally:
            await broker.close()
        deadline = time.monotonic() + timeout
        status = task["status"]
        while time.monotonic() < deadline:
            async with session.get(f"{url}/{task['id']}") as response:
                status = (await response.json())["status"]
            if status == "succeeded":
                return
            await asyncio.sleep(0.05)
    raise BenchError(f"the first task is still {status} after {timeout:g} s")


def _load(
    processes: Processes,
    tool: str,
    url: str,
    key: str,
    config: HttpConfig,
    duration: float,
    cpus: set[int] | None,
    name: str,
) -> dict[str, Any] | None:
    """Run the load generator for ``duration`` seconds; its summary, or None if it failed."""
    env = dict(os.environ, BENCH_API_KEY=key, BENCH_CASE=config.case)
    seconds: float
    if tool == "wrk":
        seconds = max(1, round(duration))
        args = [
            "wrk", "-t1", f"-c{config.connections}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT), url,
        ]  # fmt: skip
    else:
        seconds = max(0.1, duration)
        args = [
            sys.executable, "-m", "tests.bench.loadgen", url,
            "--connections", str(config.connections), "--duration", str(seconds),
        ]  # fmt: skip
        env = bench_module_env(env)
    generator = processes.start(f"{name}-{config.name}", args, env, cpus=cpus)
    deadline = time.monotonic() + seconds + 30.0
    while generator.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if generator.alive():
        processes.stop(generator)
        return None
    processes.stop(generator)
    match = _SUMMARY.search(generator.log.read_bytes())
    if match is None:
        return None
    summary: dict[str, Any] = orjson.loads(match.group(1))
    return summary


async def _xlen(url: str) -> int:
    """Tasks queued: on the tasks stream, or (published keyed by tenant, none dispatched
    yet with no worker running) in its waiting room."""
    client = Redis.from_url(url)
    try:
        waiting = await client.get("tasks:fair:n")
        return int(await client.xlen("tasks")) + int(waiting or 0)
    finally:
        await client.aclose()
