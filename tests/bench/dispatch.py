"""Benchmarks (1) dispatch throughput and (2) I/O-bound concurrency, through ONE worker.

Both publish ``TaskMessage``s straight onto the tasks stream with the broker library
(``RedisStreamsBroker.publish``, many at once: its write coalescer pipelines them), and
count terminal ``ResultEvent``s (``succeeded``/``failed``) on the results stream with a plain
``XREAD`` loop. The clock runs from the first publish to the last terminal event seen.

With ``tenants`` (N > 0) they are published keyed instead (``publish(..., key=tenant)``,
tenants in turn: ``tenant-0`` ... ``tenant-<N-1>``), so they wait in the broker's waiting
room and the worker's dispatch shares them out fairly, each tenant with a backlog of about
``tasks / N``: the path the API's tasks take. Without, the FIFO path (one stream).

The worker is a real ``ai-orchestrator worker`` subprocess on a throwaway redis-server;
with ``tracing`` (a sampling ratio) it exports its spans to an OTLP sink process (``tracing.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import orjson
from redis.asyncio import Redis

from orchestrator_broker import Message, RedisStreamsBroker

from .processes import (
    BenchError,
    CpuMeter,
    Processes,
    Service,
    bench_module_env,
    orchestrator_command,
    service_env,
)
from .tracing import SinkWindow, load_cpus, sink_env, start_sink

__all__ = ["DispatchConfig", "DispatchRun", "run_dispatch"]

_TERMINAL = frozenset({b"succeeded", b"failed"})


@attrs.frozen
class DispatchConfig:
    """One run: ``tasks`` measured tasks after ``warmup`` ones, through one worker process."""

    tasks: int
    warmup: int
    concurrency: int
    latency_ms: float = 0.0
    prompt: str = "Hello, orchestrator! Echo this back, word by word."
    publish_batch: int = 1000
    timeout: float = 120.0  # per phase (warm-up, measurement): a stall ends the run
    startup_timeout: float = 30.0
    profile: bool = False
    extra_env: Mapping[str, str] = attrs.field(factory=dict)  # e.g. OTEL_TRACES_SAMPLER
    tracing: float | None = None  # sampling ratio: export spans to a sink (never when bare)
    bare: bool = False  # run tests.bench.bare_worker instead: the calibration point
    tenants: int = 0  # publish keyed over this many tenants (0: unkeyed, straight on the stream)
    label: str = ""  # tells apart the processes (and logs) of several runs in one directory


@attrs.define
class DispatchRun:
    """What a run measured; ``complete`` is False when it stalled or the worker died."""

    complete: bool
    published: int
    results: int
    failed: int
    seconds: float
    publish_seconds: float
    cpu: dict[str, dict[str, float]]
    error: str | None = None
    worker_profile: str | None = None
    otlp_sink: dict[str, Any] | None = None  # SinkWindow's counts when tracing

    @property
    def tasks_per_second(self) -> float:
        return self.results / self.seconds if self.seconds > 0 else 0.0


def run_dispatch(processes: Processes, config: DispatchConfig) -> DispatchRun:
    """Start redis + one worker, warm up, measure; the processes stop with ``processes``."""
    redis = processes.redis(("redis-bare" if config.bare else "redis") + config.label)
    window, traced = None, {}
    if config.tracing is not None and not config.bare:
        window = SinkWindow(start_sink(processes, load_cpus(), config.startup_timeout))
        traced = sink_env(window.sink.port, config.tracing)
    env = service_env(
        redis.url,
        {
            "NUMBER_OF_WORKERS": str(config.concurrency),
            "APP_ID": "bench-worker",
            "SHUTDOWN_GRACE_SECONDS": "1",
            **traced,
            **config.extra_env,
        },
    )
    if config.bare:
        command = [sys.executable, "-m", "tests.bench.bare_worker"]
        worker = processes.start("bare-worker" + config.label, command, bench_module_env(env))
    else:
        command = [*orchestrator_command(), "worker"]
        worker = processes.start("worker" + config.label, command, env, profile=config.profile)
    assert redis.process is not None
    run = asyncio.run(_measure(redis.url, worker, redis.process.pid, config, window))
    processes.stop(worker)  # it flushes its last spans as it stops
    if worker.profile is not None:
        run.worker_profile = str(worker.profile)
    if window is not None:
        run.otlp_sink = window.finish()
    return run


async def _measure(
    url: str, worker: Service, redis_pid: int, config: DispatchConfig, window: SinkWindow | None
) -> DispatchRun:
    broker = RedisStreamsBroker.from_url(url, max_connections=64)
    reader = Redis.from_url(url)
    try:
        await _wait_for_worker(reader, worker, config.startup_timeout)
        counter = _ResultCounter(reader, worker)
        if config.warmup:
            warm = await _phase(broker, counter, config, config.warmup)
            if not warm.complete:
                warm.error = f"warm-up stalled: {warm.error}"
                return warm
        pids = {"worker": worker.pid, "redis-server": redis_pid, "harness": os.getpid()}
        if window is not None:
            pids["otlp-sink"] = window.sink.service.pid
            await asyncio.to_thread(window.start)
        meter = CpuMeter(pids)
        meter.start()
        run = await _phase(broker, counter, config, config.tasks)
        run.cpu = meter.stop()
        if window is not None:
            await asyncio.to_thread(window.stop)
        return run
    finally:
        await broker.close()
        await reader.aclose()


async def _wait_for_worker(client: Redis, worker: Service, timeout: float) -> None:
    """Until the worker's consumer group exists (it creates it when it starts consuming)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise BenchError(f"the worker exited early:\n{worker.log_tail()}")
        if await client.exists("tasks"):
            groups = await client.xinfo_groups("tasks")
            if any(_text(g["name"]) == "workers" for g in groups):
                return
        await asyncio.sleep(0.05)
    raise BenchError(f"the worker did not start consuming within {timeout:g} s")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _ResultCounter:
    """Reads the results stream from where it last stopped, counting terminal events."""

    def __init__(self, client: Redis, worker: Service) -> None:
        self.client = client
        self.worker = worker
        self.last_id: bytes = b"0-0"

    async def count(self, wanted: set[str], deadline: float) -> tuple[int, int, float]:
        """Until every task in ``wanted`` ended: ``(ended, failed, time of the last)``.

        Stops early at ``deadline`` or when the worker dies; ``wanted`` keeps the tasks that
        did not end.
        """
        ended = failed = 0
        last = time.perf_counter()
        while wanted and time.monotonic() < deadline and self.worker.alive():
            # RESP2 reply: [[stream, [(id, fields), ...]]] (redis-py types it loosely).
            reply: Any = await self.client.xread({"results": self.last_id}, count=5000, block=200)
            if not reply:
                continue
            entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
            now = time.perf_counter()
            for _entry_id, fields in entries:
                payload = orjson.loads(fields[b"payload"])
                if payload["kind"].encode() in _TERMINAL and payload["task_id"] in wanted:
                    wanted.discard(payload["task_id"])
                    ended += 1
                    failed += payload["kind"] == "failed"
                    last = now
            self.last_id = entries[-1][0]
        return ended, failed, last


async def _phase(
    broker: RedisStreamsBroker, counter: _ResultCounter, config: DispatchConfig, n: int
) -> DispatchRun:
    """Publish ``n`` tasks and wait for their terminal events (bounded by the timeout)."""
    parameters: Mapping[str, Any] = {"latency_ms": config.latency_ms} if config.latency_ms else {}
    tenants = [f"tenant-{i}" for i in range(config.tenants)]
    keys = [tenants[i % len(tenants)] if tenants else None for i in range(n)]
    messages = [_task(config.prompt, parameters, key or "bench") for key in keys]
    wanted = {m.id for m in messages}
    deadline = time.monotonic() + config.timeout
    start = time.perf_counter()
    counting = asyncio.create_task(counter.count(wanted, deadline))
    publish_seconds = 0.0
    try:
        for i in range(0, n, config.publish_batch):
            batch = range(i, min(n, i + config.publish_batch))
            await asyncio.gather(
                *(broker.publish("tasks", messages[j], key=keys[j]) for j in batch)
            )
        publish_seconds = time.perf_counter() - start
        ended, failed, last = await counting
    finally:
        counting.cancel()
    complete = ended == n
    error = None
    if not complete:
        why = "the worker exited" if not counter.worker.alive() else f"{config.timeout:g} s passed"
        error = f"{ended} of {n} tasks ended before {why}"
    return DispatchRun(
        complete=complete,
        published=n,
        results=ended,
        failed=failed,
        seconds=(last - start) if ended else time.perf_counter() - start,
        publish_seconds=publish_seconds,
        cpu={},
        error=error,
    )


def _task(prompt: str, parameters: Mapping[str, Any], tenant: str) -> Message:
    task_id = uuid.uuid4().hex
    now = time.time()
    payload = {
        "task_id": task_id,
        "tenant": tenant,
        "messages": [{"role": "user", "content": prompt, "name": None}],
        "model": "echo",
        "parameters": dict(parameters),
        "submitted_at": now,
    }
    return Message(payload=payload, id=task_id, created_at=now)
