"""The batch benchmark: a ``--lines`` (50,000: OpenAI's limit) batch through real ``api``
and ``worker`` processes on a throwaway redis-server, a fake OpenAI-compatible provider in
the harness. Prints the API's peak RSS growth during upload and ingest (target <= 100 MB),
``POST /v1/tasks`` latency percentiles while the batch is ingested (p99 <= 50 ms), Redis
memory per line, and lines per second end to end. Numbers, never assertions.

    python -m tests.bench.batch [--lines N] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

from tests.e2e.support import AI_ORCHESTRATOR, ROOT, clean_env, free_port
from tests.support.fake_llm import FakeLLM
from tests.support.redis_server import RedisServer

KEY = "bench-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _write_input(path: Path, lines: int) -> None:
    with path.open("w") as out:
        for n in range(lines):
            body = {
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Question number {n}: what is {n}+1?"}],
                "max_tokens": 16,
            }
            item = {"custom_id": f"q{n}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**item, "body": body}) + "\n")


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def _start(name: str, env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    with (work / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [AI_ORCHESTRATOR, name], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )


async def _wait_healthy(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/health") as response:
                if response.status == 200 and (await response.json()).get("workers"):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the API did not become healthy")


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    redis_server = RedisServer(work / "redis")
    redis_server.start()
    fake = FakeLLM()
    await fake.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        common = {"REDIS_URI": redis_server.url, "LOG_LEVEL": "WARNING"}
        envs = {
            "api": clean_env(**common, HOST="127.0.0.1", PORT=str(port), API_KEYS=f"acme:{KEY}"),
            "worker": clean_env(
                **common,
                NUMBER_OF_WORKERS=str(args.workers),
                METRICS_PORT="0",
                OPENAI_BASE_URL=fake.openai_base_url,
                OPENAI_API_KEY="sk-fake",
            ),
        }
        processes += [_start(name, env, work) for name, env in envs.items()]
        api_pid = processes[0].pid
        url = f"http://127.0.0.1:{port}"
        source = work / "in.jsonl"
        _write_input(source, args.lines)
        client = redis.Redis.from_url(redis_server.url)
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            await _wait_healthy(session, url)
            redis_before = int(client.info("memory")["used_memory"])
            rss_before = _rss_bytes(api_pid)
            peak = rss_before
            sampling = True

            async def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, _rss_bytes(api_pid))
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            with source.open("rb") as file:
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", file, filename="in.jsonl")
                async with session.post(f"{url}/v1/files", data=form) as response:
                    uploaded = await response.json()
            upload_seconds = time.monotonic() - started
            body = {
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
            async with session.post(f"{url}/v1/batches", json=body) as response:
                batch = await response.json()
            latencies: list[float] = []
            moments: list[float] = []
            redis_peak = 0
            ingest_seconds = None
            while True:
                begin = time.perf_counter()
                task = {"prompt": "interactive", "model": "openai/gpt-4o-mini", "cache": False}
                async with session.post(f"{url}/v1/tasks", json=task) as response:
                    await response.read()
                if ingest_seconds is None:
                    latencies.append(time.perf_counter() - begin)
                    moments.append(round(time.monotonic() - started, 2))
                async with session.get(f"{url}/v1/batches/{batch['id']}") as response:
                    batch = await response.json()
                redis_peak = max(redis_peak, int(client.info("memory")["used_memory"]))
                counts = batch["request_counts"]
                if ingest_seconds is None and counts["total"] >= args.lines:
                    ingest_seconds = time.monotonic() - started
                if batch["status"] in ("completed", "failed", "cancelled", "expired"):
                    break
                if time.monotonic() - started > args.timeout:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            sampling = False
            await sampler
        return {
            "lines": args.lines,
            "status": batch["status"],
            "request_counts": batch["request_counts"],
            "upload_seconds": round(upload_seconds, 2),
            "ingest_seconds": round(ingest_seconds, 2) if ingest_seconds else None,
            "total_seconds": round(elapsed, 2),
            "lines_per_second": round(args.lines / elapsed, 1),
            "api_peak_rss_growth_mb": round((peak - rss_before) / 2**20, 1),
            "tasks_post_during_ingest_ms": {
                "n": len(latencies),
                "p50": round(_percentile(latencies, 0.5) * 1000, 1),
                "p99": round(_percentile(latencies, 0.99) * 1000, 1),
                "max": round(max(latencies, default=0.0) * 1000, 1),
                # the five slowest: (seconds since the upload began, milliseconds)
                "slowest": sorted(
                    zip(moments, (round(v * 1000, 1) for v in latencies), strict=True),
                    key=lambda item: -item[1],
                )[:5],
            },
            "redis_peak_bytes_per_line": round((redis_peak - redis_before) / args.lines),
            "targets": {"rss_growth_mb": 100, "tasks_post_p99_ms": 50},
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        await fake.close()
        redis_server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=200, help="the worker's concurrency")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as directory:
        result = asyncio.run(_bench(args, Path(directory)))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
