"""The pipeline coalescer that the Redis adapter and the API's task store share, against a
real redis-server: one pipeline per loop turn, each waiter's own replies or own error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator_broker import BrokerError, BrokerUnavailable, PipelineCoalescer, _redis_pipeline
from orchestrator_broker._redis_errors import chained_broker_error
from orchestrator_broker._redis_pipeline import CAN_READ
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

HANG = 20.0  # hang guard, never asserted as a bound


class CountingCoalescer(PipelineCoalescer):
    """Counts the round trips (pipelines sent, resends included) and their commands."""

    def __init__(self, client: Redis, **options: Any) -> None:
        super().__init__(client, **options)
        self.round_trips: list[int] = []

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.round_trips.append(len(commands))
        return await super()._round_trip(commands)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url, socket_timeout=5.0)
    try:
        yield redis
    finally:
        await redis.aclose()


async def settle(*futures: asyncio.Future[Any]) -> list[Any]:
    """Each future's result, or its exception (as a value)."""
    async with asyncio.timeout(HANG):
        return list(await asyncio.gather(*futures, return_exceptions=True))


async def test_the_callers_of_one_turn_share_one_pipeline_in_order(client: Redis) -> None:
    coalescer = CountingCoalescer(client)

    calls = [coalescer.call("INCR", "counter") for _ in range(100)]
    group = coalescer.submit(("SET", "k", "v"), ("GET", "k"), ("INCRBY", "counter", 10))
    replies = await settle(*calls, group)

    assert replies[:100] == list(range(1, 101))  # one reply each, in the order they came
    assert replies[100] == [b"OK", b"v", 110]  # raw replies: no redis-py callbacks
    assert coalescer.round_trips == [103]


async def test_a_caller_of_a_later_turn_gets_a_pipeline_of_its_own(client: Redis) -> None:
    coalescer = CountingCoalescer(client)

    assert await coalescer.call("PING") == b"PONG"
    assert await coalescer.submit(("ECHO", "a"), ("ECHO", "b")) == [b"a", b"b"]
    assert coalescer.round_trips == [1, 2]


async def test_the_pipeline_goes_out_in_the_turn_after_its_first_caller(client: Redis) -> None:
    """No turn is lost between the callers and the send: every loop turn on a busy process
    is a wait on the way of each round trip."""
    coalescer = CountingCoalescer(client)

    first = coalescer.call("PING")
    second = coalescer.call("ECHO", "x")
    await asyncio.sleep(0)  # one turn
    assert coalescer.round_trips == [2]
    assert await settle(first, second) == [b"PONG", b"x"]


async def test_the_pipeline_is_on_the_wire_when_its_task_first_runs(
    client: Redis, redis_url: str
) -> None:
    """Written in the sending task's first step, not from a task of its own a turn later
    (redis-py's send goes through asyncio.wait_for)."""
    coalescer = PipelineCoalescer(client)
    await coalescer.call("SET", "landed", 0)  # a connection in the pool, connected
    pending = coalescer.call("INCR", "landed")
    await asyncio.sleep(0)  # the sending task's first step
    # The loop stands still from here (blocking calls): only what was written by now can
    # reach Redis. Polled until it lands; the bound is a hang guard.
    with SyncRedis.from_url(redis_url) as direct:
        deadline = time.monotonic() + HANG
        while direct.get("landed") != b"1":
            assert time.monotonic() < deadline, "the INCR was not written in the first step"
            time.sleep(0.01)  # noqa: ASYNC251
    assert await settle(pending) == [1]


async def test_without_a_stream_writer_the_pipeline_goes_through_redis_py(
    client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_redis_pipeline, "_writer_of", lambda conn: None)
    coalescer = PipelineCoalescer(client)
    calls = [coalescer.call("INCR", "fallback") for _ in range(3)]
    assert await settle(*calls) == [1, 2, 3]


async def test_an_error_reply_fails_only_its_own_caller(client: Redis) -> None:
    await client.set("text", "not a number")
    coalescer = PipelineCoalescer(client)

    before = coalescer.call("INCR", "n")
    wrong = coalescer.call("INCR", "text")
    after = coalescer.call("INCR", "n")
    failed_group = coalescer.submit(("INCR", "n"), ("LPUSH", "text", "x"), ("INCR", "n"))
    fine_group = coalescer.submit(("INCR", "n"))
    replies = await settle(before, wrong, after, failed_group, fine_group)

    assert replies[0] == 1
    assert isinstance(replies[1], ResponseError)
    assert replies[2] == 2
    assert isinstance(replies[3], ResponseError)  # the group fails on its first error...
    assert "WRONGTYPE" in str(replies[3])
    assert replies[4] == [5]  # ...though its other commands ran (no MULTI)
    assert await client.get("n") == b"5"


async def test_errors_are_mapped_for_each_waiter(client: Redis) -> None:
    await client.set("text", "not a number")
    coalescer = PipelineCoalescer(client, errors=chained_broker_error)

    first, second = await settle(coalescer.call("INCR", "text"), coalescer.call("INCR", "text"))

    for error in (first, second):
        assert type(error) is BrokerError
        assert isinstance(error.__cause__, ResponseError)
    assert first is not second  # each waiter raises its own exception


async def test_a_lost_connection_fails_every_waiter_of_its_pipeline(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    client = Redis.from_url(server.url, socket_timeout=10.0)
    coalescer = PipelineCoalescer(client, errors=chained_broker_error)
    try:
        # BLPOP holds the pipeline's replies back until the server dies under it.
        waiting = [coalescer.call("INCR", "n"), coalescer.call("BLPOP", "empty", 30)]
        waiting.append(coalescer.call("INCR", "n"))
        await asyncio.sleep(0.2)
        server.kill()
        replies = await settle(*waiting)

        assert all(isinstance(reply, BrokerUnavailable) for reply in replies), replies
        assert all(isinstance(reply.__cause__, RedisConnectionError | OSError) for reply in replies)
        # And while it is down, each new pipeline fails the same way.
        (down,) = await settle(coalescer.call("PING"))
        assert isinstance(down, BrokerUnavailable)
    finally:
        await coalescer.drain()
        await client.aclose()


async def test_a_pooled_connection_closed_by_a_restart_is_reconnected_before_the_send(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    # redis-py's pool hands out such a connection as it is (maintenance notifications on)
    # and the raw send has no retry: without the check, this SET was lost.
    server = redis_server_factory()
    client = Redis.from_url(server.url, socket_timeout=5.0)
    coalescer = CountingCoalescer(client)
    try:
        assert await settle(coalescer.call("PING")) == [b"PONG"]
        server.restart()
        await asyncio.sleep(0.1)  # the loop reads the old server's FIN

        assert await settle(coalescer.call("SET", "k", "1")) == [b"OK"]
        assert coalescer.round_trips == [1, 1]  # not a resend: sent once, on a fresh socket
    finally:
        await client.aclose()


async def test_a_pipeline_is_resent_once_after_a_restart_when_allowed(
    redis_server_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race the check above cannot close: the server goes away after the check.
    async def looks_open(self: Connection) -> bool:
        return False

    monkeypatch.setattr(Connection, CAN_READ, looks_open)
    server = redis_server_factory()
    clients = [Redis.from_url(server.url, socket_timeout=5.0) for _ in range(2)]
    plain = CountingCoalescer(clients[0])
    resending = CountingCoalescer(clients[1], resend=True)
    try:
        # A pooled connection each, which will predate the restart.
        assert await settle(plain.call("PING"), resending.call("PING")) == [b"PONG", b"PONG"]
        server.restart()

        (lost,) = await settle(plain.call("SET", "k", "1"))
        (resent,) = await settle(resending.submit(("SET", "k", "2"), ("GET", "k")))

        assert isinstance(lost, RedisConnectionError | OSError)  # never resent: may be XADD
        assert plain.round_trips == [1, 1]
        assert resent == [b"OK", b"2"]
        assert resending.round_trips == [1, 2, 2]
    finally:
        for client in clients:
            await client.aclose()


async def test_a_reply_later_than_the_socket_timeout_fails_the_pipeline(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=0.2)
    coalescer = PipelineCoalescer(client)
    try:
        slow, quick = await settle(
            coalescer.call("BLPOP", "empty", 5), coalescer.call("PING")
        )  # the PING's reply is queued behind the BLPOP's

        assert isinstance(slow, RedisTimeoutError)
        assert isinstance(quick, RedisTimeoutError)
        # The half-read connection was dropped: the next pipeline reads its own replies.
        assert await coalescer.call("ECHO", "fresh") == b"fresh"
    finally:
        await client.aclose()


async def test_a_caller_cancelled_before_the_flush_is_left_out(client: Redis) -> None:
    coalescer = CountingCoalescer(client)

    cancelled = coalescer.call("SET", "left-out", "1")
    kept = coalescer.call("SET", "kept", "1")
    cancelled.cancel()
    assert await kept == b"OK"

    assert coalescer.round_trips == [1]
    assert await client.exists("left-out") == 0


async def test_max_batch_splits_a_long_turn_into_several_pipelines(client: Redis) -> None:
    coalescer = CountingCoalescer(client, max_batch=1000)

    replies = await settle(*(coalescer.call("INCR", "n") for _ in range(2500)))

    assert sorted(replies) == list(range(1, 2501))
    assert sorted(coalescer.round_trips) == [500, 1000, 1000]


async def test_drain_waits_for_what_is_queued_and_in_flight(client: Redis) -> None:
    coalescer = PipelineCoalescer(client)
    futures = [coalescer.call("RPUSH", "list", i) for i in range(10)]

    await coalescer.drain()

    assert all(future.done() for future in futures)
    assert await client.llen("list") == 10


def test_a_batch_cap_below_one_is_refused() -> None:
    client = Redis()
    with pytest.raises(ValueError, match="max_batch"):
        PipelineCoalescer(client, max_batch=0)
