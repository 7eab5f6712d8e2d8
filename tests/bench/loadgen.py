"""A Python HTTP load generator: the fallback when ``wrk`` is not installed.

``python -m tests.bench.loadgen URL --connections 64 --duration 10`` keeps ``connections``
requests in flight (one closed loop per connection: send, read the whole answer, repeat)
for ``duration`` seconds, then prints one line ``BENCH_JSON {...}`` in the same shape as the
``wrk`` script's (requests, duration, errors, latency percentiles in ms). The API key is
read from ``BENCH_API_KEY``, the case (the body, as ``wrk_post.lua`` picks it) from
``BENCH_CASE``.

One asyncio process on one core tops out near 5,000-8,000 requests/s, well below what it
would need to saturate a fast server: prefer ``wrk`` when the numbers matter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence

import aiohttp
import orjson

# "publish" sends "cache": false: every request takes the full path (record + publish). "join"
# and "hit" leave the prompt cache on: identical requests join the first one while it is in
# flight, or hit its cached answer, and publish nothing.
PROMPT = {"prompt": "Hello, orchestrator! Echo this back, word by word.", "model": "echo"}


def body(case: str) -> bytes:
    """What every request of ``case`` sends."""
    return orjson.dumps({**PROMPT, "cache": False} if case == "publish" else PROMPT)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(pct / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def run(url: str, connections: int, duration: float, timeout: float) -> dict[str, object]:
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {os.environ.get('BENCH_API_KEY', '')}",
    }
    data = body(os.environ.get("BENCH_CASE") or "publish")
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        start = time.perf_counter()
        deadline = start + duration

        async def loop() -> None:
            while True:
                sent = time.perf_counter()
                if sent >= deadline:
                    return
                try:
                    async with session.post(url, data=data, headers=headers) as response:
                        await response.read()
                        statuses[response.status] += 1
                except TimeoutError:
                    errors["timeout"] += 1
                    continue
                except aiohttp.ClientError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    non_2xx = sum(n for status, n in statuses.items() if not 200 <= status < 400)
    ms = [v * 1000.0 for v in latencies]
    return {
        "tool": "python-aiohttp",
        "requests": len(latencies),
        "duration_s": round(elapsed, 6),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": {
            "connect": errors["connect"],
            "read": 0,
            "write": 0,
            "status": non_2xx,
            "timeout": errors["timeout"],
        },
        "latency_ms": {
            "p50": round(percentile(ms, 50), 3),
            "p90": round(percentile(ms, 90), 3),
            "p99": round(percentile(ms, 99), 3),
            "p999": round(percentile(ms, 99.9), 3),
            "max": round(ms[-1], 3) if ms else 0.0,
            "mean": round(sum(ms) / len(ms), 3) if ms else 0.0,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.loadgen")
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    args = parser.parse_args(argv)
    summary = asyncio.run(run(args.url, args.connections, args.duration, args.timeout))
    sys.stdout.write("BENCH_JSON " + orjson.dumps(summary).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
