"""Requests whose meaning is ambiguous are refused, not guessed at: two ``Authorization``
headers (400), a ``Content-Encoding`` the API does not decode (415)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import orjson
import pytest
from multidict import CIMultiDict

from orchestrator_api.config import ApiSettings
from tests.api.conftest import ACME, API_KEYS, ApiClientFactory
from tests.api.test_http_malformed import exchange
from tests.api.test_http_service import running

BODY = orjson.dumps({"prompt": "hello"})

#: Every authenticated route, with the method it takes.
AUTHENTICATED = [
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks/abc"),
    ("GET", "/v1/tasks/abc/events"),
    ("GET", "/v1/tasks/abc/ws"),
]


@pytest.mark.parametrize(
    "keys",
    [("key-acme", "key-acme"), ("key-acme", "key-globex"), ("key-acme", "nope")],
    ids=["same key twice", "two tenants", "good and bad"],
)
@pytest.mark.parametrize(("method", "path"), AUTHENTICATED)
async def test_two_authorization_headers_are_a_400_problem(
    api_client: ApiClientFactory, method: str, path: str, keys: tuple[str, str]
) -> None:
    client = await api_client()
    headers = CIMultiDict([("Authorization", f"Bearer {key}") for key in keys])

    response = await client.request(method, path, headers=headers, data=BODY)

    assert response.status == 400
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert "Authorization" in problem["detail"]
    assert "key-" not in await response.text()


async def test_one_authorization_header_is_still_fine(api_client: ApiClientFactory) -> None:
    client = await api_client()
    headers = {**ACME, "Content-Type": "application/json"}
    response = await client.post("/v1/tasks", headers=headers, data=BODY)
    assert response.status == 202


@pytest.mark.parametrize(
    "encoding", ["zstd2", "gzip, deflate", "x-gzip, identity", "compress", "gzip;q=1"]
)
async def test_an_unknown_content_encoding_on_a_body_is_a_415_problem(
    api_client: ApiClientFactory, encoding: str
) -> None:
    client = await api_client()
    headers = {**ACME, "Content-Type": "application/json", "Content-Encoding": encoding}

    response = await client.post("/v1/tasks", headers=headers, data=BODY)

    assert response.status == 415
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["type"] == "urn:ai-orchestrator:problem:unsupported-media-type"
    assert "Content-Encoding" in problem["detail"]
    assert set(response.headers["Accept-Encoding"].split(", ")) >= {"gzip", "deflate"}


async def test_two_content_encoding_headers_are_a_415_problem(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    headers = CIMultiDict(
        [*ACME.items(), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")]
    )
    response = await client.post("/v1/tasks", headers=headers, data=gzip.compress(BODY))
    assert response.status == 415


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("identity", lambda body: body),
        ("gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
    ],
)
async def test_the_encodings_aiohttp_decodes_are_accepted(
    api_client: ApiClientFactory, encoding: str, encode: object
) -> None:
    client = await api_client()
    headers = {**ACME, "Content-Type": "application/json", "Content-Encoding": encoding}
    assert callable(encode)

    response = await client.post("/v1/tasks", headers=headers, data=encode(BODY))

    assert response.status == 202


async def test_an_unknown_content_encoding_without_a_body_is_ignored(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    response = await client.get("/health", headers={"Content-Encoding": "zstd2"})
    assert response.status == 200


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with running(ApiSettings(api_keys=API_KEYS)) as (url, _):
        yield int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("encoding", ["br", "zstd"])
async def test_an_encoding_aiohttp_cannot_decode_here_is_a_415_problem(
    port: int, encoding: str
) -> None:
    """``br`` and ``zstd`` need packages this installation has not: aiohttp's parser refuses
    them before any middleware runs."""
    from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD

    if {"br": HAS_BROTLI, "zstd": HAS_ZSTD}[encoding]:
        pytest.skip(f"{encoding} is decoded by this installation")
    request = (
        b"POST /v1/tasks HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer key-acme\r\n"
        b"Content-Type: application/json\r\nContent-Encoding: %s\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (encoding.encode(), len(BODY), BODY)
    )

    answer = await exchange(port, request)

    assert answer.status == 415
    problem = answer.problem()
    assert problem["type"] == "urn:ai-orchestrator:problem:unsupported-media-type"
