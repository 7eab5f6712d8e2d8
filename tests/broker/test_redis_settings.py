"""Parsing the Redis URI, and keeping its password out of every repr and log line."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from orchestrator_broker import BrokerUnavailable, ConfigError, Message
from orchestrator_broker.redis_settings import RedisSettings
from orchestrator_broker.redis_streams import RedisStreamsBroker
from tests.support.redis_server import RedisServer

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("redis:6379", RedisSettings(host="redis", port=6379)),
        ("10.0.0.5:6380", RedisSettings(host="10.0.0.5", port=6380)),
        ("redis://cache", RedisSettings(host="cache")),
        ("redis://cache:7000/3", RedisSettings(host="cache", port=7000, db=3)),
        (
            "redis://app:p%40ss@cache:6379/0",
            RedisSettings(host="cache", username="app", password="p@ss"),
        ),
        ("redis://:pw@cache", RedisSettings(host="cache", password="pw")),
        ("rediss://cache:6380", RedisSettings(host="cache", port=6380, tls=True)),
        ("redis://[::1]:6379", RedisSettings(host="::1")),
    ],
)
def test_accepted_uris(uri: str, expected: RedisSettings) -> None:
    assert RedisSettings.from_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("", "empty"),
        ("cache", "neither host:port"),
        ("cache:notaport", "neither host:port"),
        ("cache:70000", "port"),
        ("http://cache:6379", "scheme"),
        ("redis://cache:99999", "port"),
        ("redis://cache/zero", "database"),
        ("redis://:pw@/0", "no host"),
        ("redis://cache?timeout=1", "query"),
    ],
)
def test_invalid_uris_name_the_problem(uri: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        RedisSettings.from_uri(uri)


def test_overrides_are_validated() -> None:
    assert RedisSettings.from_uri("h:1", max_connections=64).max_connections == 64
    with pytest.raises(ConfigError, match="max_connections"):
        RedisSettings.from_uri("h:1", max_connections=0)


def test_masked_url_hides_only_the_password() -> None:
    settings = RedisSettings.from_uri(f"rediss://app:{SECRET}@cache:6380/2")
    assert settings.masked_url == "rediss://app:***@cache:6380/2"
    assert str(settings) == settings.masked_url
    assert SECRET not in repr(settings)
    assert RedisSettings.from_uri("cache:6379").masked_url == "redis://cache:6379/0"


@pytest.mark.redis
async def test_no_repr_or_log_line_shows_the_password(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory(password=SECRET)
    broker = RedisStreamsBroker.from_url(server.url)
    caplog.set_level(logging.DEBUG)
    try:
        await broker.ensure_group("s", "g")
        await broker.publish("s", Message("hello"))
        await broker.ping()
        shown = [
            repr(broker),
            str(broker),
            repr(broker.settings),
            str(broker.settings),
            repr(broker._pool),
            repr(broker._read_pool),
            repr(broker._client),
        ]
        for text in shown:
            assert SECRET not in text
        assert "***" in repr(broker)
    finally:
        await broker.close()
    assert SECRET not in caplog.text


@pytest.mark.redis
async def test_a_wrong_password_is_unavailable_without_echoing_it(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(password=SECRET)
    broker = RedisStreamsBroker.from_url(f"redis://:wrong-{SECRET}@127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(BrokerUnavailable) as caught:
            await broker.ping()
        assert SECRET not in str(caught.value)
    finally:
        await broker.close()


async def test_from_url_splits_settings_and_broker_options() -> None:
    broker = RedisStreamsBroker.from_url(
        "redis://cache:6380/1", max_connections=7, read_timeout=9.0, retain_acked=60.0
    )
    try:
        assert broker.settings == RedisSettings(
            host="cache", port=6380, db=1, max_connections=7, read_timeout=9.0
        )
        assert broker.retain_acked == 60.0
        assert broker._pool.max_connections == 7
    finally:
        await broker.close()
    with pytest.raises(ConfigError, match="max_conections"):
        RedisStreamsBroker.from_url("redis://cache", max_conections=7)
