"""Coalesce the Redis commands of concurrent callers into one pipeline per event-loop turn.

Hundreds of concurrent ``publish()``/``ack()`` calls, or HTTP requests each awaiting a store
write, would otherwise each take a pool connection and a round trip; the round trip, not
Redis, is the cost. Here the first caller of a turn starts the task that sends it (which
runs in the next turn); every caller of that turn joins the same non-transactional pipeline
(no MULTI: a caller's atomicity comes from the Lua scripts it calls) and awaits its own
future, which gets its own replies or its own error: an error reply of one caller (a Lua
error, a wrong type) does not fail the others; a lost connection or a timeout fails every
caller of that pipeline. A caller cancelled before its pipeline is sent is left out of it.

The round trip itself is ``_redis_pipeline.round_trip``: commands packed by hiredis (C) into
one buffer and the replies read under one timeout for the batch (the connection's
``socket_timeout``) instead of a timer per reply, which more than doubles publish throughput
and cuts the client's CPU per command several-fold; it falls back to redis-py's ``Pipeline``
when the redis-py internals it uses are not what it expects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._redis_pipeline import round_trip

__all__ = ["Command", "PipelineCoalescer"]

#: One Redis command: its name and arguments (str, bytes, int or float).
Command = tuple[Any, ...]
#: A caller: its commands, its future, and whether it asked for one reply (``call``) or
#: the list of its replies (``submit``).
_Caller = tuple[tuple[Command, ...], "asyncio.Future[Any]", bool]

#: Errors after which a pipeline may be sent once more on a fresh connection (a pooled one
#: may predate a Redis restart).
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class PipelineCoalescer:
    """Runs the commands of each event-loop turn's callers in shared pipelines.

    ``max_batch`` caps the callers of one pipeline (a longer turn is sent as several).
    ``errors`` maps each error before a caller sees it (the broker's adapter turns redis-py
    errors into ``BrokerError``; default: as raised). ``resend``: a pipeline that fails on a
    connection error is sent once more on a fresh connection; only for callers whose every
    command is safe to repeat (idempotent scripts, reads), never for ``XADD``.
    """

    def __init__(
        self,
        client: Redis,
        *,
        max_batch: int = 1000,
        errors: Callable[[Exception], Exception] | None = None,
        resend: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._client = client
        self._timeout: float | None = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._max_batch = max_batch
        self._errors = errors
        self._resend = resend
        self._queue: list[_Caller] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()

    def call(self, *command: Any) -> asyncio.Future[Any]:
        """Queue one command for this turn's pipeline; the future gets its reply, or its
        error. (A plain function returning the future: one coroutine frame less to create
        and resume per call.)"""
        return self._queued(((command,), self._future(), True))

    def submit(self, *commands: Command) -> asyncio.Future[list[Any]]:
        """Queue ``commands`` for this turn's pipeline, together; the future gets their
        replies in order, or the first error among them."""
        return self._queued((commands, self._future(), False))

    def _future(self) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._scheduled:
            self._scheduled = True
            self._track(loop.create_task(self._flush()))
        return loop.create_future()

    def _queued(self, caller: _Caller) -> asyncio.Future[Any]:
        self._queue.append(caller)
        return caller[1]

    def _track(self, task: asyncio.Task[None]) -> None:
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _flush(self) -> None:
        """Send what this turn's callers queued. The task starts in the next loop turn, so
        every caller of this one is in; it sends the first pipeline itself (one turn
        sooner than scheduling a callback that starts a task to send it)."""
        self._scheduled = False
        batch, self._queue = self._queue, []
        size = self._max_batch
        for start in range(size, len(batch), size):
            self._track(asyncio.create_task(self._send(batch[start : start + size])))
        await self._send(batch[:size])

    async def _send(self, batch: list[_Caller]) -> None:
        live = [caller for caller in batch if not caller[1].done()]  # skip cancelled callers
        if not live:
            return
        commands = [command for group, _, _ in live for command in group]
        try:
            try:
                replies = await self._round_trip(commands)
            except _CONNECTION_ERRORS:
                if not self._resend:
                    raise
                replies = await self._round_trip(commands)
        except BaseException as exc:
            for _, future, _ in live:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(self._error(exc))
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        position = 0
        for group, future, single in live:
            count = len(group)
            if future.done():  # cancelled while in flight; its writes happened anyway
                position += count
                continue
            if single:
                reply = replies[position]
                if isinstance(reply, Exception):
                    future.set_exception(self._error(reply))
                else:
                    future.set_result(reply)
            else:
                mine = replies[position : position + count]
                error = next((reply for reply in mine if isinstance(reply, Exception)), None)
                if error is not None:
                    future.set_exception(self._error(error))
                else:
                    future.set_result(mine)
            position += count

    def _error(self, exc: Exception) -> Exception:
        return exc if self._errors is None else self._errors(exc)

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        """Write every command at once, then read one reply each (error replies as values)."""
        try:
            return await round_trip(self._client, commands, self._timeout)
        except TimeoutError as exc:
            raise RedisTimeoutError("Redis did not answer in time") from exc

    async def drain(self) -> None:
        """Wait for what is queued and every pipeline in flight (at close)."""
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
