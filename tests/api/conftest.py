"""Fixtures for the API's tests: the app over real loopback HTTP, on in-memory adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import TracerProvider

from orchestrator_api.app import create_app
from orchestrator_api.config import ApiSettings
from orchestrator_api.model import TaskRecord
from orchestrator_api.state import STATE, ApiState
from orchestrator_api.store import RedisTaskStore, TaskStore
from orchestrator_api.store.memory import MemoryTaskStore
from orchestrator_broker import Broker
from orchestrator_broker.memory import MemoryBroker

#: Two tenants with one key each: tests use these headers.
API_KEYS = (("acme", "key-acme"), ("globex", "key-globex"))
ACME = {"Authorization": "Bearer key-acme"}
GLOBEX = {"Authorization": "Bearer key-globex"}

ApiClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def api_state(client: TestClient[Any, Any]) -> ApiState:
    """The running app's state (its broker, store, settings) behind a test client."""
    app: web.Application | None = client.app
    assert app is not None
    return app[STATE]


@pytest.fixture
def api_settings() -> ApiSettings:
    """Settings with auth on (tenants ``acme`` and ``globex``) and the default limits."""
    return ApiSettings(api_keys=API_KEYS, host="127.0.0.1", port=0)


@pytest.fixture
def api_client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], api_settings: ApiSettings
) -> ApiClientFactory:
    """``await api_client(**overrides)``: a test client of the API served over loopback.

    Defaults: ``api_settings``, a fresh ``MemoryBroker`` and ``MemoryTaskStore``, an SDK tracer
    provider (so responses carry ``traceparent``), and the results consumer running. Keyword
    arguments ``settings``, ``broker``, ``store`` replace those; others go to ``create_app``.
    The app (and its results consumer) stops at teardown; the broker and store are closed.
    """

    async def make(
        *,
        settings: ApiSettings | None = None,
        broker: Broker | None = None,
        store: Any = None,
        **kwargs: Any,
    ) -> TestClient[Any, Any]:
        settings = settings or api_settings
        owned: list[Broker | MemoryTaskStore] = []
        if broker is None:
            broker = MemoryBroker()
            owned.append(broker)
        if store is None:
            store = MemoryTaskStore(settings.cache_ttl_seconds)
            owned.append(store)
        kwargs.setdefault("tracer_provider", TracerProvider())
        app = create_app(settings, broker=broker, store=store, **kwargs)

        async def close_owned(_: web.Application) -> None:
            # on_cleanup runs after cleanup_ctx: the results consumer has stopped by now.
            for resource in owned:
                await resource.close()

        app.on_cleanup.append(close_owned)
        return await aiohttp_client(app)

    return make


#: The short pending window of ``quick_store``.
PENDING = 0.2


#: Each task store: the memory one, and the Redis one on the tests' own redis-server.
_STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


def _make_store(request: pytest.FixtureRequest, **options: Any) -> TaskStore:
    options.setdefault("ttl_seconds", 60.0)
    if request.param == "memory":
        ttl = options.pop("ttl_seconds")
        return MemoryTaskStore(ttl, **options)
    return RedisTaskStore.from_url(request.getfixturevalue("redis_url"), **options)


@pytest.fixture
def store_options() -> dict[str, float]:
    """Options both stores of ``store`` are made with (``ttl_seconds`` 60 unless given); a
    test module overrides this fixture to change them."""
    return {}


@pytest.fixture(params=_STORES)
async def store(
    request: pytest.FixtureRequest, store_options: dict[str, float]
) -> AsyncIterator[TaskStore]:
    """Each task store, made with ``store_options``."""
    made = _make_store(request, **store_options)
    yield made
    await made.close()


@pytest.fixture(params=_STORES)
async def quick_store(request: pytest.FixtureRequest) -> AsyncIterator[TaskStore]:
    """Each store, with unconfirmed tasks abandoned after ``PENDING`` seconds (a TTL of 60)."""
    made = _make_store(request, pending_seconds=PENDING)
    yield made
    await made.close()


class CreateRecordingStore(MemoryTaskStore):
    """A memory store that remembers what each ``create`` was told: its Idempotency-Key
    (``keys``) and whether its caller follows the task (``follows``)."""

    def __init__(self) -> None:
        super().__init__(60)
        self.keys: list[str | None] = []
        self.follows: list[bool] = []

    async def create(
        self,
        record: TaskRecord,
        idempotency_key: str | None = None,
        cache_key: str | None = None,
        fingerprint: str | None = None,
        *,
        deltas: bool = True,
        follow: bool = False,
    ) -> TaskRecord:
        self.keys.append(idempotency_key)
        self.follows.append(follow)
        return await super().create(
            record, idempotency_key, cache_key, fingerprint, deltas=deltas, follow=follow
        )
