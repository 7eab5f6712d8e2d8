"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway redis-server for the session; tests that kill Redis use their own."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, emptied before each test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers (for fault tests); all are killed at teardown."""
    started: list[RedisServer] = []

    def start(*, appendonly: bool = False, password: str | None = None) -> RedisServer:
        server = RedisServer(
            tmp_path / f"redis-{len(started)}", appendonly=appendonly, password=password
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
