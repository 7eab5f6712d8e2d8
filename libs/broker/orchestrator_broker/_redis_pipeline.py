"""One pipeline round trip for the write coalescers: every command sent at once, a reply each.

The fast path packs the commands with hiredis into one buffer, writes it on the
connection's stream writer at once (``Connection.send_packed_command`` when it has none)
and reads the replies with ``read_response`` under one timeout for the whole batch
(redis-py's ``Pipeline`` packs in Python and arms a timer per reply: several times the
client CPU per command). Those connection methods sit below
redis-py's documented API, so ``fast_path_problem`` checks at import that they (and
``hiredis.pack_command``) are what this module calls; if not, ``round_trip`` goes through
``Redis.pipeline(transaction=False)`` instead, with the same replies (logged once).

A pooled connection that the server has closed (a Redis restart) is reconnected before the
send: redis-py's pool leaves that check out when maintenance notifications are on, its
default with RESP3, and counts on command retries that a raw send does not have.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ResponseError

__all__ = ["fast_path_problem", "round_trip"]

_log = logging.getLogger(__name__)


def _parameters(function: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


#: The connection method that tells whether a pooled socket was closed or holds unread data
#: (``can_read_destructive`` before redis-py 8 deprecated it for ``can_read``).
CAN_READ = (
    "can_read"
    if inspect.iscoroutinefunction(getattr(AbstractConnection, "can_read", None))
    else "can_read_destructive"
)


def fast_path_problem() -> str | None:
    """Why the packed fast path cannot be used with the installed redis-py/hiredis, or None."""
    try:
        import hiredis

        if hiredis.pack_command(("SET", b"k", 1, 1.5)) != (  # type: ignore[arg-type]
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n1.5\r\n"
        ):
            return "hiredis.pack_command packs differently"
        send = _parameters(AbstractConnection.send_packed_command)
        if list(send)[:2] != ["self", "command"] or "check_health" not in send:
            return "Connection.send_packed_command takes other arguments"
        if "timeout" not in _parameters(AbstractConnection.read_response):
            return "Connection.read_response takes no timeout"
        if "nowait" not in _parameters(AbstractConnection.disconnect):
            return "Connection.disconnect takes no nowait"
        for method in (CAN_READ, "connect"):
            if not inspect.iscoroutinefunction(getattr(AbstractConnection, method, None)):
                return f"Connection.{method} is not a coroutine function"
        required = [
            p
            for name, p in _parameters(ConnectionPool.get_connection).items()
            if name != "self"
            and p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            return "ConnectionPool.get_connection needs arguments"
    except Exception as exc:  # ImportError, a signature that cannot be read, ...
        return f"probe failed: {exc!r}"
    return None


_PROBLEM = fast_path_problem()
#: Whether ``round_trip`` takes the packed fast path (tests turn it off).
FAST = _PROBLEM is None
if _PROBLEM is not None:
    _log.info(
        "broker: Redis pipelines go through redis-py's Pipeline (%s); slower, same replies",
        _PROBLEM,
    )


async def round_trip(
    client: Redis, commands: Sequence[tuple[Any, ...]], timeout: float | None
) -> list[Any]:
    """The replies to ``commands``, in order, a ``ResponseError`` as a value in its place.

    Raises redis-py's connection errors, and ``TimeoutError`` when the batch took longer than
    ``timeout`` seconds (None: no limit). A connection that failed mid-batch is disconnected
    (redis-py reconnects it on its next use).
    """
    if FAST:
        return await _packed(client.connection_pool, commands, timeout)
    return await _pipelined(client, commands, timeout)


async def _packed(
    pool: ConnectionPool, commands: Sequence[tuple[Any, ...]], timeout: float | None
) -> list[Any]:
    import hiredis

    payload = b"".join([hiredis.pack_command(command) for command in commands])
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        if await getattr(conn, CAN_READ)():
            # Closed by the server, or holding unread data (see the module docstring).
            await conn.disconnect()
            await conn.connect()
        writer = _writer_of(conn)
        if writer is not None:
            # Straight onto the socket, now: redis-py's send_packed_command writes from a
            # task of asyncio.wait_for's (Python 3.11), which runs a loop turn later and
            # resumes its caller two turns after that, on every round trip. Drained (a
            # no-op unless the socket is backed up) under the batch's timeout.
            writer.write(payload)
        else:  # not the connection this was written against: redis-py's public way
            await conn.send_packed_command(payload, check_health=False)
        replies: list[Any] = []
        async with asyncio.timeout(timeout):
            if writer is not None:
                await writer.drain()
            for _ in commands:
                try:
                    # math.inf: no per-read timer; the one above bounds the batch
                    replies.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:
                    replies.append(exc)
        return replies
    except BaseException:
        await conn.disconnect(nowait=True)  # a half-read reply stream is unusable
        raise
    finally:
        await pool.release(conn)


def _writer_of(conn: AbstractConnection) -> asyncio.StreamWriter | None:
    """The connection's stream writer (redis-py sets ``_writer`` when it connects)."""
    writer = getattr(conn, "_writer", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


async def _pipelined(
    client: Redis, commands: Sequence[tuple[Any, ...]], timeout: float | None
) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        # Raw replies, as the fast path reads them (no per-command response callbacks).
        pipe.response_callbacks = {}
        for command in commands:
            pipe.execute_command(*command)
        async with asyncio.timeout(timeout):
            return list(await pipe.execute(raise_on_error=False))
