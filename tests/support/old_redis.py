"""A loopback server that answers like an old Redis (6.0) to what a client asks on connect:
``PING``, ``INFO`` (with its ``redis_version``) and ``+OK`` for anything else. Redis 6 cannot
be installed here, so this stands in for one in the version-check tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["old_redis"]


async def _serve(version: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    info = f"# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n".encode()
    try:
        while True:
            header = await reader.readline()
            if not header.startswith(b"*"):
                return
            words = []
            for _ in range(int(header[1:])):
                length = int((await reader.readline())[1:])
                words.append((await reader.readexactly(length + 2))[:-2].upper())
            if words[:1] == [b"PING"]:
                writer.write(b"+PONG\r\n")
            elif words[:1] == [b"INFO"]:
                writer.write(b"$%d\r\n%s\r\n" % (len(info), info))
            else:
                writer.write(b"+OK\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        return
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def old_redis(version: str = "6.0.16") -> AsyncIterator[str]:
    """Serve on a free loopback port for the block; yields its ``redis://`` URL."""
    server = await asyncio.start_server(
        lambda r, w: _serve(version, r, w), host="127.0.0.1", port=0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        await server.wait_closed()
