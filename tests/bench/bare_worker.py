"""A bare redis-py Streams worker: the calibration point for the dispatch benchmarks.

What a minimal hand-written consumer does, and nothing more: ``XREADGROUP`` as many entries
as there are free slots, run each (sleep ``parameters.latency_ms``, answer with the prompt),
and write its terminal event (``XADD results``) plus the ``XACK`` in one pipeline per event
loop turn. No leases, retries, dead letters, tracing or ordering guarantees. Run by
``bench --baseline`` under the same conditions as the real worker, so the distance between
the two is measured on the same machine at the same moment.

``python -m tests.bench.bare_worker`` reads ``REDIS_URI`` and ``NUMBER_OF_WORKERS``; it
stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

STREAM, GROUP, RESULTS = "tasks", "workers", "results"


class BareWorker:
    def __init__(self, client: Redis, concurrency: int) -> None:
        self.client = client
        self.slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.outbox: list[tuple[bytes, bytes, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def read(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.slots.acquire()  # at least one slot free
            count = 1
            while not self.slots.locked() and count < min(100, self.concurrency):
                await self.slots.acquire()
                count += 1
            reply: Any = await self.client.xreadgroup(
                GROUP, "bare", {STREAM: ">"}, count=count, block=500
            )
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                task = asyncio.create_task(self.run(entry_id, fields))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            for _ in range(count - len(entries)):
                self.slots.release()

    async def run(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            task = orjson.loads(fields[b"payload"])
            latency = float(task.get("parameters", {}).get("latency_ms", 0) or 0)
            if latency:
                await asyncio.sleep(latency / 1000.0)
            event = {
                "task_id": task["task_id"],
                "tenant": task["tenant"],
                "kind": "succeeded",
                "attempt": 1,
                "seq": 0,
                "at": time.time(),
                "text": task["messages"][-1]["content"],
            }
            done = asyncio.get_running_loop().create_future()
            self.outbox.append((entry_id, orjson.dumps(event), done))
            self.wake.set()
            await done
        finally:
            self.slots.release()

    async def write(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.wake.wait()
            self.wake.clear()
            batch, self.outbox = self.outbox, []
            if not batch:
                continue
            pipe = self.client.pipeline(transaction=False)
            for _, payload, _ in batch:
                pipe.xadd(RESULTS, {"payload": payload})
            pipe.xack(STREAM, GROUP, *(entry_id for entry_id, _, _ in batch))
            await pipe.execute()
            for _, _, done in batch:
                done.set_result(None)


async def main() -> None:
    client = Redis.from_url(os.environ["REDIS_URI"])
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    worker = BareWorker(client, int(os.environ.get("NUMBER_OF_WORKERS", "100")))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    jobs = [asyncio.create_task(worker.read(stop)), asyncio.create_task(worker.write(stop))]
    await stop.wait()
    for job in [*jobs, *worker.tasks]:
        job.cancel()
    await asyncio.gather(*jobs, *worker.tasks, return_exceptions=True)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
