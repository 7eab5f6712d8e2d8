"""The Redis Streams adapter refuses a server older than it needs, at startup and in one line."""

from __future__ import annotations

import pytest

from orchestrator_broker import ConfigError, MemoryBroker, RedisStreamsBroker
from orchestrator_broker.redis_streams import check_supported_server
from tests.support.old_redis import old_redis
from tests.support.redis_server import free_port


@pytest.mark.redis
async def test_a_current_redis_passes_and_names_its_version(redis_url: str) -> None:
    broker = RedisStreamsBroker.from_url(redis_url)
    try:
        version = await broker.check_server()
        await check_supported_server(broker)
    finally:
        await broker.close()
    assert int(version.split(".")[0]) >= 7


async def test_an_old_redis_is_refused_naming_its_version_and_the_minimum() -> None:
    async with old_redis("6.0.16") as url:
        broker = RedisStreamsBroker.from_url(url)
        try:
            with pytest.raises(ConfigError, match=r"runs Redis 6\.0\.16.*needs Redis 7\.0"):
                await check_supported_server(broker)
        finally:
            await broker.close()


async def test_a_server_that_does_not_answer_yet_is_not_refused() -> None:
    broker = RedisStreamsBroker.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        await check_supported_server(broker, timeout=2.0)
    finally:
        await broker.close()


async def test_other_brokers_are_not_checked() -> None:
    broker = MemoryBroker()
    await check_supported_server(broker)
    await broker.close()
