"""``GET /v1/tasks``: a tenant's own tasks within their TTL, newest first, in OpenAI's list
shape, a page at a time, filtered by status; bad queries are 400 problems naming the
parameter."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from orchestrator_api.model import TaskPage, TaskStatus
from orchestrator_api.store import MemoryTaskStore, RedisTaskStore, StoreUnavailable
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_tasks.messages import ErrorInfo, EventKind, ResultEvent
from tests.api.conftest import ACME, GLOBEX, ApiClientFactory, api_state
from tests.api.test_http_tasks import problem_of

Client = TestClient[Any, Any]


async def submit(client: Client, count: int, headers: dict[str, str] = ACME) -> list[str]:
    """Submit ``count`` tasks, one after the other; their ids, oldest first."""
    ids = []
    for n in range(count):
        response = await client.post("/v1/tasks", json={"prompt": f"task {n}"}, headers=headers)
        assert response.status == 202
        ids.append((await response.json())["id"])
    return ids


async def listing(client: Client, query: str = "", headers: dict[str, str] = ACME) -> Any:
    response = await client.get(f"/v1/tasks{query}", headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def finish(client: Client, task_id: str, kind: EventKind) -> None:
    error = ErrorInfo(type="rate_limit", message="slow down") if kind is EventKind.FAILED else None
    await api_state(client).store.apply(
        ResultEvent(
            task_id=task_id,
            tenant="acme",
            kind=kind,
            attempt=1,
            seq=0,
            at=time.time(),
            text="done",
            error=error,
        )
    )


async def test_tasks_are_listed_newest_first_in_openai_s_list_shape(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    ids = await submit(client, 3)

    body = await listing(client)

    assert body["object"] == "list"
    assert [task["id"] for task in body["data"]] == ids[::-1]
    assert body["first_id"] == ids[-1]
    assert body["last_id"] == ids[0]
    assert body["has_more"] is False


async def test_each_item_is_the_task_as_get_shows_it(api_client: ApiClientFactory) -> None:
    client = await api_client()
    (task_id,) = await submit(client, 1)
    await finish(client, task_id, EventKind.SUCCEEDED)

    (item,) = (await listing(client))["data"]

    assert item == await (await client.get(f"/v1/tasks/{task_id}", headers=ACME)).json()
    assert item["status"] == "succeeded"


async def test_without_tasks_the_list_is_empty(api_client: ApiClientFactory) -> None:
    client = await api_client()

    body = await listing(client)

    assert body == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


async def test_a_page_holds_twenty_tasks_unless_told(api_client: ApiClientFactory) -> None:
    client = await api_client()
    await submit(client, 22)

    assert len((await listing(client))["data"]) == 20
    assert len((await listing(client, "?limit=22"))["data"]) == 22


async def test_pages_follow_one_another_through_last_id(api_client: ApiClientFactory) -> None:
    client = await api_client()
    ids = await submit(client, 5)

    first = await listing(client, "?limit=2")
    second = await listing(client, f"?limit=2&after={first['last_id']}")
    third = await listing(client, f"?limit=2&after={second['last_id']}")

    pages = [[task["id"] for task in page["data"]] for page in (first, second, third)]
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    assert [page["has_more"] for page in (first, second, third)] == [True, True, False]


async def test_the_status_filter_lists_only_that_status(api_client: ApiClientFactory) -> None:
    client = await api_client()
    queued, done, broken = await submit(client, 3)
    await finish(client, done, EventKind.SUCCEEDED)
    await finish(client, broken, EventKind.FAILED)

    async def ids_of(status: str) -> list[str]:
        return [task["id"] for task in (await listing(client, f"?status={status}"))["data"]]

    assert await ids_of("queued") == [queued]
    assert await ids_of("succeeded") == [done]
    assert await ids_of("failed") == [broken]
    assert await ids_of("running") == []


async def test_another_tenants_tasks_are_never_listed(api_client: ApiClientFactory) -> None:
    client = await api_client()
    mine = await submit(client, 2, ACME)
    theirs = await submit(client, 1, GLOBEX)

    assert [task["id"] for task in (await listing(client))["data"]] == mine[::-1]
    assert [task["id"] for task in (await listing(client, headers=GLOBEX))["data"]] == theirs


async def test_a_cursor_naming_another_tenant_s_task_is_a_400(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    await submit(client, 1, ACME)
    (theirs,) = await submit(client, 1, GLOBEX)

    response = await client.get(f"/v1/tasks?after={theirs}", headers=ACME)

    problem = await problem_of(response, 400)
    assert [error["field"] for error in problem["errors"]] == ["after"]


async def test_an_unknown_cursor_is_a_400_naming_after(api_client: ApiClientFactory) -> None:
    client = await api_client()
    await submit(client, 1)

    problem = await problem_of(await client.get("/v1/tasks?after=nope", headers=ACME), 400)

    assert problem["type"] == "urn:ai-orchestrator:problem:validation-error"
    assert [error["field"] for error in problem["errors"]] == ["after"]
    assert "after" in problem["detail"]


@pytest.mark.parametrize("limit", ["0", "101", "-1", "1.5", "ten", "", " 5", "٣", "1e1"])
async def test_a_limit_that_is_not_1_to_100_is_a_400_naming_limit(
    api_client: ApiClientFactory, limit: str
) -> None:
    client = await api_client()

    response = await client.get("/v1/tasks", params={"limit": limit}, headers=ACME)

    problem = await problem_of(response, 400)
    assert [error["field"] for error in problem["errors"]] == ["limit"]


@pytest.mark.parametrize("status", ["done", "QUEUED", ""])
async def test_an_unknown_status_is_a_400_naming_status(
    api_client: ApiClientFactory, status: str
) -> None:
    client = await api_client()

    response = await client.get("/v1/tasks", params={"status": status}, headers=ACME)

    problem = await problem_of(response, 400)
    assert [error["field"] for error in problem["errors"]] == ["status"]


async def test_an_after_longer_than_any_task_id_is_a_400(api_client: ApiClientFactory) -> None:
    client = await api_client()

    response = await client.get("/v1/tasks", params={"after": "a" * 65}, headers=ACME)

    assert [e["field"] for e in (await problem_of(response, 400))["errors"]] == ["after"]


async def test_a_parameter_given_twice_is_a_400(api_client: ApiClientFactory) -> None:
    client = await api_client()

    response = await client.get("/v1/tasks?limit=1&limit=2&status=queued", headers=ACME)

    assert [e["field"] for e in (await problem_of(response, 400))["errors"]] == ["limit"]


async def test_every_bad_parameter_is_named(api_client: ApiClientFactory) -> None:
    client = await api_client()

    response = await client.get("/v1/tasks?limit=0&status=done", headers=ACME)

    problem = await problem_of(response, 400)
    assert sorted(error["field"] for error in problem["errors"]) == ["limit", "status"]


async def test_unknown_parameters_are_ignored(api_client: ApiClientFactory) -> None:
    client = await api_client()
    await submit(client, 1)

    assert len((await listing(client, "?order=desc"))["data"]) == 1


async def test_listing_needs_an_api_key(api_client: ApiClientFactory) -> None:
    client = await api_client()

    await problem_of(await client.get("/v1/tasks"), 401)


class DownStore(MemoryTaskStore):
    async def list_tasks(
        self,
        tenant: str,
        *,
        limit: int,
        after: str | None = None,
        status: TaskStatus | None = None,
    ) -> TaskPage:
        raise StoreUnavailable("down")


async def test_a_store_that_is_down_is_a_503(api_client: ApiClientFactory) -> None:
    client = await api_client(store=DownStore(60))

    response = await client.get("/v1/tasks", headers=ACME)

    await problem_of(response, 503)
    assert "Retry-After" in response.headers


@pytest.fixture
async def redis_backends(redis_url: str) -> AsyncIterator[tuple[RedisStreamsBroker, Any]]:
    broker = RedisStreamsBroker.from_url(redis_url)
    store = RedisTaskStore.from_url(redis_url, ttl_seconds=60)
    yield broker, store
    await broker.close()
    await store.close()


@pytest.mark.redis
async def test_listing_on_redis_pages_filters_and_isolates(
    redis_backends: tuple[RedisStreamsBroker, Any], api_client: ApiClientFactory
) -> None:
    broker, store = redis_backends
    client = await api_client(broker=broker, store=store)
    ids = await submit(client, 3)
    (theirs,) = await submit(client, 1, GLOBEX)
    await finish(client, ids[1], EventKind.SUCCEEDED)

    first = await listing(client, "?limit=2")
    rest = await listing(client, f"?limit=2&after={first['last_id']}")
    done = await listing(client, "?status=succeeded")

    assert [t["id"] for t in first["data"] + rest["data"]] == ids[::-1]
    assert (first["has_more"], rest["has_more"]) == (True, False)
    assert [t["id"] for t in done["data"]] == [ids[1]]
    await problem_of(await client.get(f"/v1/tasks?after={theirs}", headers=ACME), 400)
