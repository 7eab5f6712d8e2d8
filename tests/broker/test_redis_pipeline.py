"""The coalescers' round trip: the packed fast path and its redis-py Pipeline fall-back agree."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from orchestrator_broker import _redis_pipeline
from orchestrator_broker._redis_pipeline import fast_path_problem, round_trip

pytestmark = pytest.mark.redis

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "k", 1.5),
    ("GET", "k"),
    ("HSET", "h", "a", 1, "b", b"\x00bin"),
    ("HGETALL", "h"),  # a callback would make it a dict: both must give the raw reply
    ("XADD", "s", "*", "f", "v"),
    ("XLEN", "s"),
    ("EVAL", "return redis.error_reply('CODE broken')", 0),
    ("INCR", "h"),  # WRONGTYPE
    ("EXISTS", "k", "h", "missing"),
]


def _comparable(replies: list[Any]) -> list[Any]:
    """Errors by text, and the XADD reply (a fresh stream id each run) by shape."""
    out = [("error", str(r)) if isinstance(r, ResponseError) else r for r in replies]
    out[4] = out[4].count(b"-")
    return out


async def _run(url: str, *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(_redis_pipeline, "FAST", fast)
    client = Redis.from_url(url)
    try:
        await client.flushall()
        return await round_trip(client, COMMANDS, 5.0)
    finally:
        await client.aclose()


def test_the_installed_redis_py_passes_the_probe() -> None:
    assert fast_path_problem() is None
    assert _redis_pipeline.FAST


async def test_the_fallback_gives_the_fast_paths_replies(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = await _run(redis_url, fast=True, monkeypatch=monkeypatch)
    slow = await _run(redis_url, fast=False, monkeypatch=monkeypatch)
    assert _comparable(fast) == _comparable(slow)
    assert fast[3] in ({b"a": b"1", b"b": b"\x00bin"}, [b"a", b"1", b"b", b"\x00bin"])
    assert isinstance(fast[6], ResponseError)
    assert str(fast[6]) == "CODE broken"
    assert fast[-1] == 2


def test_a_changed_send_packed_command_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    async def send_packed_command(self: AbstractConnection, command: bytes) -> None:
        raise AssertionError("not called")

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send_packed_command)
    assert "send_packed_command" in (fast_path_problem() or "")


def test_a_read_response_without_timeout_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    async def read_response(self: AbstractConnection, disable_decoding: bool = False) -> Any:
        raise AssertionError("not called")

    monkeypatch.setattr(AbstractConnection, "read_response", read_response)
    assert "read_response" in (fast_path_problem() or "")


def test_a_connection_without_the_closed_socket_check_is_detected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(AbstractConnection, _redis_pipeline.CAN_READ)
    assert _redis_pipeline.CAN_READ in (fast_path_problem() or "")


def test_a_missing_hiredis_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "hiredis", None)
    assert "probe failed" in (fast_path_problem() or "")
