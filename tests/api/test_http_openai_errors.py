"""Errors on the OpenAI-compatible paths are OpenAI's error object; the API's own paths keep
RFC 9457 problems. Checks made before any handler runs (the strict input middleware, an
unknown route, a wrong method) follow the same rule."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from orchestrator_api.problems import speaks_openai
from tests.api.conftest import ACME, ApiClientFactory

_TWO_AUTHORIZATIONS = [("Authorization", "Bearer key-acme"), ("Authorization", "Bearer x")]


@pytest.fixture
async def client(api_client: ApiClientFactory) -> TestClient[Any, Any]:
    return await api_client()


def _openai_error(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


@pytest.mark.parametrize(
    ("path", "openai"),
    [
        ("/v1/chat/completions", True),
        ("/v1/models", True),
        ("/v1/models/openai/gpt-4o", True),
        ("/v1/files/file-1/content", True),
        ("/v1/batches", True),
        ("/v1/embeddings", True),
        ("/v1/tasks", False),
        ("/v1/tasks/abc/events", False),
        ("/v1/admin/queues", False),
        ("/v1/console/config", False),
        ("/health", False),
        ("/console", False),
    ],
)
def test_which_paths_speak_openai(path: str, openai: bool) -> None:
    assert speaks_openai(path) is openai


async def test_a_strict_header_check_on_chat_is_an_openai_error(
    client: TestClient[Any, Any],
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        headers=_TWO_AUTHORIZATIONS,
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status == 400
    assert response.content_type == "application/json"
    error = _openai_error(await response.json())
    assert error["type"] == "invalid_request_error"
    assert "Authorization" in error["message"]


async def test_the_same_check_on_tasks_stays_a_problem(client: TestClient[Any, Any]) -> None:
    response = await client.post("/v1/tasks", headers=_TWO_AUTHORIZATIONS, json={"prompt": "hi"})
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert (await response.json())["status"] == 400


async def test_models_without_a_key_is_an_openai_authentication_error(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/v1/models")
    assert response.status == 401
    error = _openai_error(await response.json())
    assert error["type"] == "authentication_error"
    assert "WWW-Authenticate" in response.headers


async def test_an_unknown_model_is_an_openai_not_found(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/models/no-such-model", headers=ACME)
    assert response.status == 404
    error = _openai_error(await response.json())
    assert error["type"] == "not_found_error"
    assert error["code"] == "not-found"


async def test_an_endpoint_we_do_not_serve_is_an_openai_not_found(
    client: TestClient[Any, Any],
) -> None:
    response = await client.post("/v1/embeddings", headers=ACME, json={"input": "x"})
    assert response.status == 404
    assert _openai_error(await response.json())["type"] == "not_found_error"


async def test_a_wrong_method_on_chat_is_an_openai_error_with_allow(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/v1/chat/completions", headers=ACME)
    assert response.status == 405
    assert _openai_error(await response.json())["type"] == "invalid_request_error"
    assert response.headers["Allow"] == "POST"
