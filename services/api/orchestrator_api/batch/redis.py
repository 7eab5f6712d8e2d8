"""``RedisBatchStore``: files and batches in Redis, shared by every API replica.

Keys (``prefix`` defaults to ``orchestrator``), all expiring:

- ``<prefix>:file:<id>`` string: the file's description (JSON), written after its last
  chunk, so a file is visible only whole; ``<prefix>:file:<id>:c`` list: its bytes in
  ``CHUNK_BYTES`` chunks (the last one shorter), streamed in and out a chunk at a time;
- ``<prefix>:tenant:<tenant>:files`` and ``...:batches`` sorted sets: ids by creation, for
  the listings (entries of expired files are dropped as listings meet them);
- ``<prefix>:batch:<id>`` hash: the runner's fields (``b``, JSON), the tenant (``tn``), the
  cancel request (``cx``) and the counters (``cur``, ``ln``, ``ok``, ``ko``);
  ``...:p`` sorted set: the pending lines by line number; ``...:r`` hash: each finished
  line's output entry (``1`` or ``0`` for output or error file, then the JSON); ``...:lease``
  the replica running it;
- ``<prefix>:batches:active`` set: the batches not finished yet.

A stretch of lines and its counters change in one Lua script (``ADD_LINES``,
``FINISH_LINES``), so a runner that dies mid-way leaves nothing half-counted. With AOF on,
a batch survives a Redis restart like the tasks do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Iterator, Sequence
from typing import Any, Final

import attrs
import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator_broker.redis_settings import RedisSettings

from ..store.errors import StoreError, StoreUnavailable
from ..store.redis import client_for
from .model import CHUNK_BYTES, BatchRecord, BatchStatus, FileInfo, LineResult, PendingLine

__all__ = ["RedisBatchStore"]

#: Kept with the counters, not in the runner's JSON.
_STORE_FIELDS: Final = ("lines", "completed", "failed", "cursor", "cancelling_at")
_BATCH_FIELDS: Final = ("b", "tn", "cx", "cur", "ln", "ok", "ko")

_ADD_LINES: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'cur') or '0') then
  redis.call('HSET', KEYS[1], 'cur', ARGV[1])
end
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], 'ln') or '0') then
  redis.call('HSET', KEYS[1], 'ln', ARGV[2])
end
local i = 5
for _ = 1, tonumber(ARGV[3]) do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 0 then
    redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
local ok, ko = 0, 0
while i <= #ARGV do
  redis.call('ZREMRANGEBYSCORE', KEYS[2], ARGV[i], ARGV[i])
  if redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1]) == 1 then
    if string.sub(ARGV[i + 1], 1, 1) == '1' then ok = ok + 1 else ko = ko + 1 end
  end
  i = i + 2
end
if ok > 0 then redis.call('HINCRBY', KEYS[1], 'ok', ok) end
if ko > 0 then redis.call('HINCRBY', KEYS[1], 'ko', ko) end
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[4]) end
return 1
"""
_LEASE: Final = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"Redis unreachable during {action}: {exc}") from exc
    except RedisError as exc:
        raise StoreError(f"Redis error during {action}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _file_info(raw: bytes | None) -> FileInfo | None:
    return None if raw is None else FileInfo(**orjson.loads(raw))


def _pending_line(raw: bytes) -> PendingLine:
    line, task_id, custom_id, model = orjson.loads(raw)
    return PendingLine(line=line, task_id=task_id, custom_id=custom_id, model=model)


def _encoded_result(result: LineResult) -> bytes:
    return (b"1" if result.ok else b"0") + result.text


def _decode_batch(values: Sequence[bytes | None]) -> BatchRecord | None:
    blob, tenant, cancelling, cursor, lines, completed, failed = values
    if blob is None or tenant is None:
        return None
    fields = orjson.loads(blob)
    return BatchRecord(
        **{
            **fields,
            "tenant": _text(tenant),
            "status": BatchStatus(fields["status"]),
            "errors": tuple(fields.get("errors", ())),
            "cancelling_at": None if cancelling is None else float(cancelling),
            "cursor": int(cursor or 0),
            "lines": int(lines or 0),
            "completed": int(completed or 0),
            "failed": int(failed or 0),
        }
    )


def _encode_batch(record: BatchRecord) -> bytes:
    fields = attrs.asdict(record, recurse=False)
    for name in (*_STORE_FIELDS, "tenant"):
        del fields[name]
    fields["status"] = record.status.value
    fields["errors"] = list(record.errors)
    return orjson.dumps(fields)


class RedisBatchStore:
    """The BatchStore on Redis; safe to share between any number of API replicas."""

    def __init__(
        self,
        client: Redis,
        *,
        ttl_seconds: float,
        prefix: str = "orchestrator",
        owns_client: bool = False,
    ) -> None:
        # Any: redis-py's annotations do not know this client returns bytes.
        self._client: Any = client
        self._ttl = max(int(ttl_seconds), 1)
        self._prefix = prefix
        self._owns_client = owns_client
        self._add_lines = client.register_script(_ADD_LINES)
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: float, **kwargs: Any) -> RedisBatchStore:
        """A store with its own connection pool (closed by ``close()``); connects lazily.
        Batches and their lines expire ``ttl_seconds`` after their last change."""
        client = client_for(RedisSettings.from_uri(url))
        return cls(client, ttl_seconds=ttl_seconds, owns_client=True, **kwargs)

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    # ---- files ----------------------------------------------------------------------------

    async def put_file(self, info: FileInfo, chunks: AsyncIterable[bytes]) -> FileInfo:
        body = self._key("file", info.id, "c")
        expires = int(info.expires_at) + 1
        size = 0
        buffer = bytearray()
        try:
            async for chunk in chunks:
                buffer += chunk
                while len(buffer) >= CHUNK_BYTES:
                    size += await self._push(body, bytes(buffer[:CHUNK_BYTES]), expires)
                    del buffer[:CHUNK_BYTES]
            if buffer:
                size += await self._push(body, bytes(buffer), expires)
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(body)
            raise
        stored = attrs.evolve(info, bytes=size)
        index = self._key("tenant", info.tenant, "files")
        with _translated("put_file"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._key("file", info.id), orjson.dumps(attrs.asdict(stored)))
                pipe.expireat(self._key("file", info.id), expires)
                pipe.zadd(index, {info.id: info.created_at})
                pipe.expireat(index, expires, gt=True)
                pipe.expireat(index, expires, nx=True)
                await pipe.execute()
        return stored

    async def _push(self, key: str, chunk: bytes, expires: int) -> int:
        with _translated("put_file"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.rpush(key, chunk)
                pipe.expireat(key, expires)
                await pipe.execute()
        return len(chunk)

    async def get_file(self, tenant: str, file_id: str) -> FileInfo | None:
        with _translated("get_file"):
            info = _file_info(await self._client.get(self._key("file", file_id)))
        return info if info is not None and info.tenant == tenant else None

    async def list_files(
        self, tenant: str, *, limit: int, after: str | None, purpose: str | None, ascending: bool
    ) -> tuple[list[FileInfo], bool]:
        index = self._key("tenant", tenant, "files")
        found: list[FileInfo] = []
        with _translated("list_files"):
            start = 0
            if after is not None:
                rank = await (
                    self._client.zrank(index, after)
                    if ascending
                    else self._client.zrevrank(index, after)
                )
                if rank is None:
                    return [], False
                start = rank + 1
            step = max(limit * 2, 32)
            while len(found) <= limit:
                ids = await self._client.zrange(index, start, start + step - 1, desc=not ascending)
                if not ids:
                    break
                start += len(ids)
                raws = await self._client.mget([self._key("file", _text(i)) for i in ids])
                gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
                if gone:
                    await self._client.zrem(index, *gone)
                for raw in raws:
                    info = _file_info(raw)
                    if info is not None and (purpose is None or info.purpose == purpose):
                        found.append(info)
        return found[:limit], len(found) > limit

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        if await self.get_file(tenant, file_id) is None:
            return False
        with _translated("delete_file"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key("file", file_id), self._key("file", file_id, "c"))
                pipe.zrem(self._key("tenant", tenant, "files"), file_id)
                await pipe.execute()
        return True

    async def read_file(self, file_id: str, start: int = 0) -> AsyncGenerator[bytes, None]:
        body = self._key("file", file_id, "c")
        index, skip = divmod(start, CHUNK_BYTES)
        while True:
            with _translated("read_file"):
                chunk = await self._client.lindex(body, index)
            if chunk is None:
                return
            yield chunk[skip:] if skip else chunk
            index, skip = index + 1, 0

    # ---- batches --------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord) -> None:
        key = self._key("batch", record.id)
        index = self._key("tenant", record.tenant, "batches")
        with _translated("create_batch"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"b": _encode_batch(record), "tn": record.tenant})
                pipe.expire(key, self._ttl)
                pipe.zadd(index, {record.id: record.created_at})
                pipe.expire(index, self._ttl)
                pipe.sadd(self._key("batches", "active"), record.id)
                await pipe.execute()

    async def load(self, batch_id: str) -> BatchRecord | None:
        with _translated("load"):
            values = await self._client.hmget(self._key("batch", batch_id), _BATCH_FIELDS)
        return _decode_batch(values)

    async def get_batch(self, tenant: str, batch_id: str) -> BatchRecord | None:
        record = await self.load(batch_id)
        return record if record is not None and record.tenant == tenant else None

    async def list_batches(
        self, tenant: str, *, limit: int, after: str | None
    ) -> tuple[list[BatchRecord], bool]:
        index = self._key("tenant", tenant, "batches")
        found: list[BatchRecord] = []
        with _translated("list_batches"):
            start = 0
            if after is not None:
                rank = await self._client.zrevrank(index, after)
                if rank is None:
                    return [], False
                start = rank + 1
            while len(found) <= limit:
                ids = await self._client.zrange(index, start, start + limit, desc=True)
                if not ids:
                    break
                start += len(ids)
                for batch_id in ids:
                    record = await self.load(_text(batch_id))
                    if record is None:
                        await self._client.zrem(index, batch_id)
                    else:
                        found.append(record)
        return found[:limit], len(found) > limit

    async def request_cancel(self, tenant: str, batch_id: str, now: float) -> BatchRecord | None:
        if await self.get_batch(tenant, batch_id) is None:
            return None
        with _translated("request_cancel"):
            await self._client.hsetnx(self._key("batch", batch_id), "cx", repr(now))
        return await self.get_batch(tenant, batch_id)

    async def active_batches(self) -> list[str]:
        with _translated("active_batches"):
            members = await self._client.smembers(self._key("batches", "active"))
        return sorted(_text(member) for member in members)

    async def acquire(self, batch_id: str, owner: str, seconds: float) -> bool:
        with _translated("acquire"):
            held = await self._lease(
                keys=[self._key("batch", batch_id, "lease")], args=[owner, int(seconds * 1000)]
            )
        return bool(held)

    async def release(self, batch_id: str, owner: str) -> None:
        with _translated("release"):
            await self._release(keys=[self._key("batch", batch_id, "lease")], args=[owner])

    async def save(self, record: BatchRecord) -> None:
        key = self._key("batch", record.id)
        with _translated("save"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, "b", _encode_batch(record))
                pipe.expire(key, self._ttl)
                pipe.expire(self._key("tenant", record.tenant, "batches"), self._ttl)
                await pipe.execute()

    async def add_lines(
        self,
        batch_id: str,
        cursor: int,
        lines: int,
        pending: Sequence[PendingLine],
        done: Sequence[LineResult],
    ) -> None:
        args: list[Any] = [cursor, lines, len(pending), self._ttl]
        for line in pending:
            args += [line.line, orjson.dumps([line.line, line.task_id, line.custom_id, line.model])]
        for result in done:
            args += [result.line, _encoded_result(result)]
        await self._run_lines(batch_id, args)

    async def _run_lines(self, batch_id: str, args: list[Any]) -> None:
        keys = [self._key("batch", batch_id, *part) for part in ((), ("p",), ("r",))]
        with _translated("add_lines"):
            await self._add_lines(keys=keys, args=args)

    async def pending(self, batch_id: str, limit: int) -> list[PendingLine]:
        with _translated("pending"):
            members = await self._client.zrange(self._key("batch", batch_id, "p"), 0, limit - 1)
        return [_pending_line(member) for member in members]

    async def finish_lines(self, batch_id: str, results: Sequence[LineResult]) -> None:
        # ADD_LINES with no new pending lines and the cursor unchanged (0 never raises it).
        args: list[Any] = [0, 0, 0, self._ttl]
        for result in results:
            args += [result.line, _encoded_result(result)]
        await self._run_lines(batch_id, args)

    async def line_results(self, batch_id: str, first: int, count: int) -> list[LineResult | None]:
        lines = list(range(first, first + count))
        if not lines:
            return []
        with _translated("line_results"):
            raws = await self._client.hmget(self._key("batch", batch_id, "r"), lines)
        return [
            None if raw is None else LineResult(line=line, ok=raw[:1] == b"1", text=raw[1:])
            for line, raw in zip(lines, raws, strict=True)
        ]

    async def retire(self, batch_id: str) -> None:
        with _translated("retire"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key("batch", batch_id, "p"), self._key("batch", batch_id, "r"))
                pipe.srem(self._key("batches", "active"), batch_id)
                await pipe.execute()

    async def ping(self) -> None:
        with _translated("ping"):
            await self._client.ping()

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
