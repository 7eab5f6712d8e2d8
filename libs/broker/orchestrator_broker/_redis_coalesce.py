"""Coalesce writes issued within one event-loop turn into one pipeline round trip.

Hundreds of concurrent ``publish()`` or ``ack()`` calls would otherwise each take a pool
connection and a round trip. Here the first call of a turn schedules a flush with
``loop.call_soon``; every call of that turn lands in the same non-transactional pipeline,
and each caller awaits its own future, which gets its own result or its own error.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from ._redis_errors import to_broker_error
from ._redis_pipeline import round_trip

_Item = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


def _mapped(exc: Exception) -> Exception:
    error = to_broker_error(exc)
    if error is not exc:
        error.__cause__ = exc
    return error


class WriteCoalescer:
    """Batches commands per loop turn; ``max_batch`` caps one pipeline's length."""

    def __init__(self, client: Redis, max_batch: int = 1000) -> None:
        self._client = client
        self._max_batch = max_batch
        self._queue: list[_Item] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command for the next pipeline; await the result, which raises
        ``BrokerError`` subclasses. (A plain function returning the future: one coroutine
        frame less to create and resume per publish.)"""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        for start in range(0, len(batch), self._max_batch):
            task = asyncio.create_task(self._send(batch[start : start + self._max_batch]))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item[1].done()]  # skip cancelled callers
        if not live:
            return
        try:
            results = await self._round_trip([args for args, _ in live])
        except BaseException as exc:
            for _, future in live:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(_mapped(exc))
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(_mapped(result))
            else:
                future.set_result(result)

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write every command at once, then read one reply each (errors as values); see
        ``_redis_pipeline`` for the fast path and its fall-back."""
        timeout = self._client.connection_pool.connection_kwargs.get("socket_timeout")
        return await round_trip(self._client, commands, timeout)

    async def drain(self) -> None:
        """Flush what is queued and wait for every pipeline in flight."""
        if self._scheduled:
            self._flush()
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
