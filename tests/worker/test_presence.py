"""The worker announces what it serves under a TTL while it runs, and withdraws at the end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from orchestrator_broker import Broker, BrokerUnavailable, MemoryBroker
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_tasks import decode_advert, presence_group
from orchestrator_worker import WorkerSettings
from orchestrator_worker.errors import ConfigError
from tests.worker.support import (
    TASKS,
    EchoProvider,
    collect,
    registry,
    start_worker,
    submit,
    wait_for,
)

GROUP = presence_group(TASKS)


async def advert_of(broker: Broker, consumer: str) -> dict[str, Any] | None:
    return (await broker.members(GROUP)).get(consumer)


async def test_a_running_worker_advertises_what_it_serves(broker: MemoryBroker) -> None:
    running = await start_worker(
        broker,
        consumer_name="w-presence",
        concurrency=7,
        model_aliases={"fast": ("echo",)},
    )
    await wait_for(lambda: advert_of(broker, "w-presence"))

    advert = decode_advert(await advert_of(broker, "w-presence"))
    assert advert.consumer == "w-presence"
    assert advert.providers == ("echo",)
    assert advert.default_model == "echo"
    assert dict(advert.aliases) == {"fast": ("echo",)}
    assert advert.concurrency == 7
    assert advert.started_at > 0
    await running.stop()


async def test_a_stopped_worker_withdraws_its_advert(broker: MemoryBroker) -> None:
    running = await start_worker(broker, consumer_name="w-leaving")
    await wait_for(lambda: advert_of(broker, "w-leaving"))
    await running.stop()
    assert await advert_of(broker, "w-leaving") is None


async def test_a_cancelled_worker_withdraws_its_advert(broker: MemoryBroker) -> None:
    running = await start_worker(broker, consumer_name="w-cancelled")
    await wait_for(lambda: advert_of(broker, "w-cancelled"))
    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running.task
    assert await advert_of(broker, "w-cancelled") is None


async def test_the_advert_is_renewed_before_its_ttl_runs_out() -> None:
    announced = CountingBroker()
    running = await start_worker(announced, consumer_name="w-renewing", presence_ttl=0.3)
    await wait_for(lambda: announced.announces >= 3)
    assert announced.ttls == {0.3}
    assert await advert_of(announced, "w-renewing") is not None
    await running.stop()
    await announced.close()


class CountingBroker(MemoryBroker):
    """Counts announces; fails them while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.announces = 0
        self.ttls: set[float] = set()
        self.down = False

    async def announce(
        self, group: str, member: str, payload: Mapping[str, Any], ttl: float
    ) -> None:
        self.announces += 1
        self.ttls.add(ttl)
        if self.down:
            raise BrokerUnavailable("Redis unavailable: connection refused")
        await super().announce(group, member, payload, ttl)


async def test_a_broker_outage_is_logged_once_and_the_worker_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = CountingBroker()
    broker.down = True
    running = await start_worker(broker, consumer_name="w-outage", presence_ttl=0.3)
    with caplog.at_level(logging.INFO, logger="orchestrator_worker.presence"):
        await wait_for(lambda: broker.announces >= 4)
        task = await submit(broker, "still working")
        events = await collect(broker, 1)
        assert events[task.task_id][-1].text == "still working"
        broker.down = False
        await wait_for(lambda: advert_of(broker, "w-outage"))
    messages = [r.getMessage() for r in caplog.records if r.name == "orchestrator_worker.presence"]
    assert len([m for m in messages if m.startswith("cannot announce")]) == 1
    assert "w-outage announced again" in messages[-1]
    await running.stop()
    await broker.close()


def test_presence_ttl_is_read_from_the_environment() -> None:
    assert WorkerSettings.from_env({}).presence_ttl == 15.0
    assert WorkerSettings.from_env({"PRESENCE_TTL_SECONDS": "2.5"}).presence_ttl == 2.5
    with pytest.raises(ConfigError, match="PRESENCE_TTL_SECONDS"):
        WorkerSettings.from_env({"PRESENCE_TTL_SECONDS": "0"})


@pytest.fixture
async def redis_broker(redis_url: str) -> AsyncIterator[RedisStreamsBroker]:
    broker = RedisStreamsBroker.from_url(redis_url)
    yield broker
    await broker.close()


@pytest.mark.redis
async def test_advertises_and_withdraws_through_redis(redis_broker: RedisStreamsBroker) -> None:
    running = await start_worker(
        redis_broker, consumer_name="w-redis", providers=registry(EchoProvider())
    )
    await wait_for(lambda: advert_of(redis_broker, "w-redis"))
    assert decode_advert(await advert_of(redis_broker, "w-redis")).providers == ("echo",)
    await running.stop()
    assert await advert_of(redis_broker, "w-redis") is None
