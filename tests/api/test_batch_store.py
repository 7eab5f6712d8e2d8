"""The BatchStore contract, run against both adapters: files whole or not at all, read from
any offset; a batch's lines and counters change together and once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import attrs
import pytest

from orchestrator_api.batch import (
    BatchRecord,
    BatchStatus,
    BatchStore,
    FileInfo,
    LineResult,
    MemoryBatchStore,
    PendingLine,
    RedisBatchStore,
)
from orchestrator_api.batch.model import CHUNK_BYTES


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BatchStore]:
    made: BatchStore
    if request.param == "memory":
        made = MemoryBatchStore()
    else:
        made = RedisBatchStore.from_url(request.getfixturevalue("redis_url"), ttl_seconds=600)
    yield made
    await made.close()


def info(file_id: str = "file-1", tenant: str = "acme", at: float | None = None) -> FileInfo:
    now = at or time.time()
    return FileInfo(file_id, tenant, "in.jsonl", "batch", 0, now, now + 600)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def batch(batch_id: str = "batch_1", at: float = 1.0) -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        tenant="acme",
        input_file_id="file-1",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        status=BatchStatus.VALIDATING,
        created_at=at,
        expires_at=at + 86_400,
    )


async def test_a_file_bigger_than_a_chunk_reads_back_whole_and_from_any_offset(
    store: BatchStore,
) -> None:
    data = bytes(range(256)) * (CHUNK_BYTES // 100)  # about 2.5 chunks

    stored = await store.put_file(info(), chunks(data[:1000], data[1000:]))

    assert stored.bytes == len(data)
    assert b"".join([c async for c in store.read_file("file-1")]) == data
    offset = CHUNK_BYTES + 17
    assert b"".join([c async for c in store.read_file("file-1", offset)]) == data[offset:]
    assert await store.get_file("acme", "file-1") == stored
    assert await store.get_file("globex", "file-1") is None


async def test_an_upload_that_breaks_off_leaves_no_file(store: BatchStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (CHUNK_BYTES + 1)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await store.put_file(info(), broken())

    assert await store.get_file("acme", "file-1") is None
    assert [c async for c in store.read_file("file-1")] == []


async def test_files_are_listed_newest_first_a_page_at_a_time(store: BatchStore) -> None:
    for n in range(3):
        await store.put_file(info(f"file-{n}", at=time.time() + n), chunks(b"{}\n"))
    await store.put_file(info("file-other", tenant="globex"), chunks(b"{}\n"))

    page, more = await store.list_files("acme", limit=2, after=None, purpose=None, ascending=False)
    rest, last = await store.list_files(
        "acme", limit=2, after=page[-1].id, purpose=None, ascending=False
    )

    assert ([f.id for f in page], more) == (["file-2", "file-1"], True)
    assert ([f.id for f in rest], last) == (["file-0"], False)
    assert await store.delete_file("acme", "file-1")
    assert not await store.delete_file("globex", "file-0")
    listed, _ = await store.list_files("acme", limit=10, after=None, purpose=None, ascending=True)
    assert [f.id for f in listed] == ["file-0", "file-2"]


async def test_lines_recorded_twice_are_counted_once(store: BatchStore) -> None:
    await store.create_batch(batch())
    pending = [PendingLine(0, "t0", "a", "m"), PendingLine(2, "t2", "c", "m")]
    done = [LineResult(1, False, b'{"custom_id":"b"}')]

    await store.add_lines("batch_1", 300, 3, pending, done)
    await store.add_lines("batch_1", 300, 3, pending, done)  # a resumed runner, again
    await store.finish_lines("batch_1", [LineResult(0, True, b'{"custom_id":"a"}')])
    await store.finish_lines("batch_1", [LineResult(0, True, b'{"custom_id":"a"}')])

    record = await store.load("batch_1")
    assert record is not None
    assert (record.lines, record.completed, record.failed, record.cursor) == (3, 1, 1, 300)
    assert await store.pending("batch_1", 10) == [PendingLine(2, "t2", "c", "m")]
    results = await store.line_results("batch_1", 0, 3)
    assert [r.ok if r else None for r in results] == [True, False, None]
    await store.add_lines("batch_1", 300, 3, [PendingLine(0, "t0", "a", "m")], [])
    assert len(await store.pending("batch_1", 10)) == 1  # a finished line stays finished


async def test_save_keeps_the_counters_and_a_cancel_request(store: BatchStore) -> None:
    await store.create_batch(batch())
    await store.add_lines("batch_1", 10, 1, [PendingLine(0, "t0", "a", "m")], [])
    asked = await store.request_cancel("acme", "batch_1", 5.0)
    assert asked is not None
    assert asked.cancelling_at == 5.0

    stale = batch()  # the runner's copy from before
    await store.save(attrs.evolve(stale, status=BatchStatus.IN_PROGRESS))

    record = await store.get_batch("acme", "batch_1")
    assert record is not None
    assert (record.status, record.lines, record.cancelling_at) == (BatchStatus.IN_PROGRESS, 1, 5.0)
    assert record.shown_status is BatchStatus.CANCELLING
    assert await store.get_batch("globex", "batch_1") is None
    assert await store.request_cancel("globex", "batch_1", 6.0) is None


async def test_one_owner_holds_a_lease_until_it_releases_it(store: BatchStore) -> None:
    assert await store.acquire("batch_1", "a", 30)
    assert not await store.acquire("batch_1", "b", 30)
    assert await store.acquire("batch_1", "a", 30)  # renewed
    await store.release("batch_1", "b")  # not b's: nothing
    assert not await store.acquire("batch_1", "b", 30)
    await store.release("batch_1", "a")
    assert await store.acquire("batch_1", "b", 30)


async def test_a_retired_batch_is_no_longer_active(store: BatchStore) -> None:
    await store.create_batch(batch("batch_1"))
    await store.create_batch(batch("batch_2", at=2.0))
    assert await store.active_batches() == ["batch_1", "batch_2"]

    await store.retire("batch_1")

    assert await store.active_batches() == ["batch_2"]
    listed, more = await store.list_batches("acme", limit=5, after=None)
    assert ([b.id for b in listed], more) == (["batch_2", "batch_1"], False)
