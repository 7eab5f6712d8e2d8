"""Benchmark (5) ``followers``: joining one in-flight task, with ``--followers`` already joined.

One leader task is created with a prompt cache key, confirmed published and started; then
``followers`` (100,000) identical submissions join it through the task store's own
``create`` (``RedisTaskStore`` on a throwaway redis-server, or ``MemoryTaskStore``), ``64`` at
a time as concurrent requests would. Every ``sample`` (1,000) joins are timed: the first and
the last sample show whether a join costs more once many tasks joined. Then the leader's
terminal event is applied (``TaskStore.apply``), which is what releases the followers.

What is measured, per join: wall time (the harness's ``create`` calls, concurrently), the
harness's CPU, and (Redis) the server's main-thread CPU from ``INFO cpu``; CPU times depend
less on how loaded the machine is than wall times do. For the terminal event: ``apply``'s
wall time, the server's CPU, and the longest single command (``SLOWLOG``): while one
command runs, every other client of that Redis waits. Each sampled follower is read back to
check it shows the leader's result, and (Redis) that its keys expire with the leader.

A warm-up first runs the same on another leader (``sample`` followers, then its end), so
the first sample measures joining, not loading the scripts or opening connections.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from redis.asyncio import Redis

from orchestrator_api.model import TaskRecord, TaskStatus
from orchestrator_api.store import MemoryTaskStore, RedisTaskStore, TaskStore
from orchestrator_tasks.messages import EventKind, ResultEvent, Usage

from .processes import Processes, pin, usable_cpus

__all__ = ["FollowersConfig", "run_followers"]

_TENANT = "bench"
_KEY = "f0" * 20  # a cache key: a digest, as TaskService makes them
_WARM_UP_KEY = "0f" * 20
_TTL = 600.0


@attrs.frozen
class FollowersConfig:
    followers: int = 100_000
    sample: int = 1_000
    concurrency: int = 64
    store: str = "redis"  # or "memory"
    timeout: float = 120.0  # for the joins, and for the terminal event


def run_followers(processes: Processes, config: FollowersConfig) -> dict[str, Any]:
    """Run the measurement; a redis-server (if any) stops with ``processes``."""
    url = None
    if config.store == "redis":
        redis = processes.redis("redis")
        assert redis.process is not None
        cpus = usable_cpus()
        if len(cpus) >= 2:
            pin(redis.process.pid, {cpus[-1]})
        url = redis.url
    return asyncio.run(_measure(url, config))


def _record() -> TaskRecord:
    return TaskRecord(
        id=uuid.uuid4().hex,
        tenant=_TENANT,
        status=TaskStatus.QUEUED,
        created_at=time.time(),
        model="echo",
        metadata={"bench": True},
    )


def _event(leader: TaskRecord, kind: EventKind, seq: int, **fields: Any) -> ResultEvent:
    return ResultEvent(
        task_id=leader.id, tenant=_TENANT, kind=kind, attempt=1, seq=seq, at=time.time(), **fields
    )


class _RedisStats:
    """The server's CPU (``INFO cpu``, main thread: where commands run), memory, slow log."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def cpu_usec(self) -> float:
        cpu = await self.client.info("cpu")
        return (
            float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])
        ) * 1e6

    async def memory(self) -> int:
        return int((await self.client.info("memory"))["used_memory"])

    async def key_bytes(self, key: str) -> int:
        return int(await self.client.memory_usage(key, samples=0) or 0)

    async def log_everything(self) -> None:
        await self.client.config_set("slowlog-log-slower-than", 0)
        await self.client.config_set("slowlog-max-len", 100_000)
        await self.client.slowlog_reset()

    async def longest_command(self) -> tuple[float, str]:
        entries = await self.client.slowlog_get(100_000)
        mine = [e for e in entries if not _harness_command(e)]
        if not mine:
            return 0.0, ""
        longest = max(mine, key=lambda e: e["duration"])
        return float(longest["duration"]), _command_name(longest)


def _command_name(entry: dict[str, Any]) -> str:
    command = entry.get("command", b"")
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return " ".join(text.split()[:2])


def _harness_command(entry: dict[str, Any]) -> bool:
    return _command_name(entry).split(" ")[0].upper() in ("SLOWLOG", "CONFIG", "INFO")


async def _timed(
    calls: int, concurrency: int, call: Callable[[], Awaitable[TaskRecord]]
) -> tuple[float, float, list[TaskRecord]]:
    """``calls`` calls, ``concurrency`` in flight: wall and CPU seconds, and the answers."""
    answers: list[TaskRecord] = []
    remaining = calls

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            answers.append(await call())

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(lane() for _ in range(min(concurrency, calls))))
    return time.perf_counter() - wall, time.process_time() - cpu, answers


_METRICS = ("wall_us_per_join", "harness_cpu_us_per_join", "redis_cpu_us_per_join")


def _tenths(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the median of the first and of the last tenth of ``samples``."""
    n = max(len(samples) // 10, 1)
    medians: dict[str, Any] = {"samples_each": n}
    for key in _METRICS:
        values = [s[key] for s in samples if s[key] is not None]
        if values:
            first, last = statistics.median(values[:n]), statistics.median(values[-n:])
            ratio = round(last / first, 2) if first else None
            medians[key] = {"first": first, "last": last, "last_over_first": ratio}
    return medians


async def _measure(url: str | None, config: FollowersConfig) -> dict[str, Any]:
    store: TaskStore
    admin: Redis | None = None
    if url is None:
        store = MemoryTaskStore(_TTL)
    else:
        store = RedisTaskStore.from_url(url, ttl_seconds=_TTL, max_connections=64)
        admin = Redis.from_url(url)
    stats = _RedisStats(admin) if admin is not None else None
    try:
        async with asyncio.timeout(config.timeout * 2 + 30):
            return await _run(store, stats, config)
    except TimeoutError:
        return {"status": "incomplete", "error": f"more than {config.timeout:g} s per phase"}
    finally:
        await store.close()
        if admin is not None:
            await admin.aclose()


async def _lead(store: TaskStore, key: str) -> TaskRecord:
    """A task leading ``key``, published and running."""
    leader = await store.create(_record(), cache_key=key)
    await store.confirm(_TENANT, leader.id)
    await store.apply(_event(leader, EventKind.STARTED, 0))
    return leader


async def _warm_up(store: TaskStore, config: FollowersConfig) -> None:
    leader = await _lead(store, _WARM_UP_KEY)
    await _timed(
        config.sample, config.concurrency, lambda: store.create(_record(), None, _WARM_UP_KEY)
    )
    await store.apply(_event(leader, EventKind.SUCCEEDED, 1, text="warm"))


async def _run(
    store: TaskStore, stats: _RedisStats | None, config: FollowersConfig
) -> dict[str, Any]:
    await _warm_up(store, config)
    leader = await _lead(store, _KEY)
    leader_key = f"orchestrator:task:{leader.id}"
    leader_bytes_before = await stats.key_bytes(leader_key) if stats else None
    memory_before = await stats.memory() if stats else None

    async def join() -> TaskRecord:
        return await store.create(_record(), cache_key=_KEY)

    samples: list[dict[str, Any]] = []
    sampled: list[TaskRecord] = []
    not_joined = 0
    deadline = time.monotonic() + config.timeout
    done = 0
    while done < config.followers:
        if time.monotonic() > deadline:
            return {
                "status": "incomplete",
                "error": f"{done} of {config.followers} joins within {config.timeout:g} s",
            }
        n = min(config.sample, config.followers - done)
        usec = await stats.cpu_usec() if stats else 0.0
        wall, cpu, answers = await _timed(n, config.concurrency, join)
        usec = (await stats.cpu_usec() - usec) if stats else 0.0
        not_joined += sum(a.joined != leader.id for a in answers)
        samples.append(
            {
                "after_followers": done,
                "joins": n,
                "wall_us_per_join": round(wall * 1e6 / n, 1),
                "harness_cpu_us_per_join": round(cpu * 1e6 / n, 1),
                "redis_cpu_us_per_join": round(usec / n, 2) if stats else None,
            }
        )
        if done == 0 or done + n >= config.followers:
            sampled += [answers[0], answers[-1]]
        done += n

    memory_after = await stats.memory() if stats else None
    leader_bytes_after = await stats.key_bytes(leader_key) if stats else None

    # The end of the leader: what it costs to release every follower.
    if stats:
        await stats.log_everything()
    usec = await stats.cpu_usec() if stats else 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    text = "Hello, orchestrator! Echo this back, word by word."
    usage = Usage(input_tokens=10, output_tokens=10)
    ended = _event(leader, EventKind.SUCCEEDED, 1, text=text, provider="echo", usage=usage)
    applied = await store.apply(ended)
    apply_wall, apply_cpu = time.perf_counter() - wall, time.process_time() - cpu
    apply_usec = (await stats.cpu_usec() - usec) if stats else None
    longest, longest_name = await stats.longest_command() if stats else (None, None)

    shown = [await store.get(_TENANT, f.id) for f in sampled]
    results_seen = sum(
        r is not None and r.status is TaskStatus.SUCCEEDED and r.result is not None
        and r.result.text == text
        for r in shown
    )  # fmt: skip
    expiring = None
    if stats is not None:
        ttls = [await stats.client.pttl(f"orchestrator:task:{f.id}") for f in sampled]
        expiring = sum(0 < t <= _TTL * 1000 for t in ttls)

    first, last = samples[0], samples[-1]
    complete = applied and not_joined == 0 and results_seen == len(sampled)
    return {
        "status": "complete" if complete else "incomplete",
        "error": None
        if complete
        else f"applied={applied}, not joined={not_joined}, results seen "
        f"{results_seen}/{len(sampled)}",
        "store": type(store).__name__,
        "followers": done,
        "sample": config.sample,
        "concurrency": config.concurrency,
        "first_sample": first,
        "last_sample": last,
        "last_over_first": {
            key: round(last[key] / first[key], 2) if first[key] else None for key in _METRICS
        },
        # One sample is at the mercy of a noisy machine: the medians of the first and the
        # last tenth of the samples say the same more steadily.
        "tenths": _tenths(samples),
        "samples": samples,
        "not_joined": not_joined,
        "leader_record_bytes": {"before_joins": leader_bytes_before, "after": leader_bytes_after},
        "redis_memory_bytes_per_follower": (
            round((memory_after - memory_before) / done, 1)
            if memory_after is not None and memory_before is not None
            else None
        ),
        "terminal_event": {
            "applied": applied,
            "apply_wall_ms": round(apply_wall * 1e3, 2),
            "apply_harness_cpu_ms": round(apply_cpu * 1e3, 2),
            "redis_cpu_ms": round(apply_usec / 1e3, 2) if apply_usec is not None else None,
            "longest_redis_command_ms": round(longest / 1e3, 2) if longest is not None else None,
            "longest_redis_command": longest_name,
        },
        "sampled_followers": len(sampled),
        "sampled_followers_with_the_result": results_seen,
        "sampled_followers_expiring_with_the_leader": expiring,
        "harness_pid": os.getpid(),
    }
