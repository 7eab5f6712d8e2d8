"""The fairness benchmark: how long another tenant waits behind one tenant's flood.

One consumer with ``slots`` slots runs tasks of ``task_ms`` each (a sleep: an I/O-bound
model call) from a throwaway redis-server. Tenant A submits ``flood`` tasks, then tenant B
submits ``others``; the clock runs from B's first submission to B's last task finishing.
``fifo`` publishes without a key (one stream, first come first served: B waits behind all
of A's); ``fair`` publishes keyed by tenant (B's tasks overtake A's backlog).

Run: ``python -m tests.bench.fairness [--flood 600 --others 20 --slots 10 --task-ms 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson

from orchestrator_broker import ConsumeOptions, Fairness, Message, RedisStreamsBroker
from tests.support.redis_server import RedisServer


async def one_run(
    url: str, *, fair: bool, flood: int, others: int, slots: int, task_s: float
) -> float:
    stream = f"bench-{'fair' if fair else 'fifo'}-{time.monotonic_ns()}"
    broker = RedisStreamsBroker.from_url(url)
    try:
        await broker.ensure_group(stream, "g")
        for i in range(flood):
            await broker.publish(stream, Message({"t": "a", "n": i}), key="a" if fair else None)
        b_started = time.monotonic()
        for i in range(others):
            await broker.publish(stream, Message({"t": "b", "n": i}), key="b" if fair else None)
        done_b = asyncio.Event()
        finished_b = 0
        free = asyncio.Semaphore(slots)
        options = ConsumeOptions(batch_size=1, block=0.5, fairness=Fairness() if fair else None)
        consumer = broker.consume(stream, "g", "c", options)
        running: set[asyncio.Task[None]] = set()

        async def run(delivery: object) -> None:
            nonlocal finished_b
            await asyncio.sleep(task_s)
            await delivery.ack()  # type: ignore[attr-defined]
            free.release()
            if delivery.message.payload["t"] == "b":  # type: ignore[attr-defined]
                finished_b += 1
                if finished_b == others:
                    done_b.set()

        async def fetch() -> None:
            while True:
                await free.acquire()
                delivery = await anext(consumer)
                task = asyncio.create_task(run(delivery))
                running.add(task)
                task.add_done_callback(running.discard)

        fetcher = asyncio.create_task(fetch())
        await done_b.wait()
        elapsed = time.monotonic() - b_started
        fetcher.cancel()
        for task in list(running):
            task.cancel()
        await asyncio.gather(fetcher, *running, return_exceptions=True)
        await consumer.aclose()
        return elapsed
    finally:
        await broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=600)
    parser.add_argument("--others", type=int, default=20)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--task-ms", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            results = {}
            for mode in ("fifo", "fair"):
                results[mode] = asyncio.run(
                    one_run(
                        server.url,
                        fair=mode == "fair",
                        flood=args.flood,
                        others=args.others,
                        slots=args.slots,
                        task_s=args.task_ms / 1000,
                    )
                )
        finally:
            server.stop()
    summary = {**vars(args), "b_last_finished_s": results}
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
