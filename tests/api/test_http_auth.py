"""Bearer API keys: 401s, tenants, and isolation between tenants."""

from __future__ import annotations

import pytest

from orchestrator_api.config import ApiSettings
from tests.api.conftest import ACME, GLOBEX, ApiClientFactory
from tests.api.test_http_tasks import problem_of


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic a2V5LWFjbWU6"},
        {"Authorization": "key-acme"},
    ],
    ids=["missing", "unknown", "empty", "basic", "no-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/tasks"),
        ("GET", "/v1/tasks/abc"),
        ("GET", "/v1/tasks/abc/events"),
        ("GET", "/v1/tasks/abc/ws"),
    ],
)
async def test_requests_without_a_valid_key_are_401_with_a_bearer_challenge(
    api_client: ApiClientFactory, headers: dict[str, str], method: str, path: str
) -> None:
    client = await api_client()
    response = await client.request(method, path, json={"prompt": "x"}, headers=headers)
    await problem_of(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_the_bearer_scheme_is_case_insensitive(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.post(
        "/v1/tasks", json={"prompt": "x"}, headers={"Authorization": "bearer key-acme"}
    )
    assert response.status == 202


async def test_a_tenant_cannot_see_another_tenants_task(api_client: ApiClientFactory) -> None:
    client = await api_client()
    task = await (await client.post("/v1/tasks", json={"prompt": "x"}, headers=ACME)).json()
    for suffix in ("", "/events"):
        response = await client.get(f"/v1/tasks/{task['id']}{suffix}", headers=GLOBEX)
        await problem_of(response, 404)
    assert (await client.get(f"/v1/tasks/{task['id']}", headers=ACME)).status == 200


async def test_several_keys_may_belong_to_one_tenant(api_client: ApiClientFactory) -> None:
    settings = ApiSettings(api_keys=(("acme", "old-key"), ("acme", "new-key")))
    client = await api_client(settings=settings)
    task = await (
        await client.post(
            "/v1/tasks", json={"prompt": "x"}, headers={"Authorization": "Bearer old-key"}
        )
    ).json()
    response = await client.get(
        f"/v1/tasks/{task['id']}", headers={"Authorization": "Bearer new-key"}
    )
    assert response.status == 200


async def test_with_auth_disabled_everyone_is_tenant_default(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client(settings=ApiSettings(auth_disabled=True))
    task = await (await client.post("/v1/tasks", json={"prompt": "x"})).json()
    assert (await client.get(f"/v1/tasks/{task['id']}")).status == 200
    # Any Authorization header is ignored, not rejected.
    response = await client.get(f"/v1/tasks/{task['id']}", headers={"Authorization": "Bearer x"})
    assert response.status == 200


async def test_health_and_openapi_need_no_key(api_client: ApiClientFactory) -> None:
    client = await api_client()
    assert (await client.get("/health")).status == 200
    assert (await client.get("/openapi.json")).status == 200
