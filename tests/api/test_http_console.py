"""The console's files and endpoints over HTTP: the security headers on every file, the
config endpoint, and the operator endpoints (401 without a key, 403 for a tenant not in
ADMIN_TENANTS, their shapes, a dead letter replayed and purged)."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest

from orchestrator_api.config import ApiSettings, ConfigError
from orchestrator_broker import ConsumeOptions, Message
from orchestrator_broker.memory import MemoryBroker
from orchestrator_tasks import ChatMessage, TaskMessage, encode_task
from tests.api.conftest import ACME, API_KEYS, ApiClientFactory

OPS = {"Authorization": "Bearer key-ops"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@pytest.fixture
def api_settings() -> ApiSettings:
    return ApiSettings(
        api_keys=(*API_KEYS, ("ops", "key-ops")),
        host="127.0.0.1",
        port=0,
        admin_tenants=frozenset({"ops"}),
        console_trace_url="https://grafana.example/explore?trace={trace_id}",
    )


def _secured(headers: Any) -> None:
    assert headers["Content-Security-Policy"] == CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-cache"


async def test_the_page_is_html_with_the_security_headers(api_client: ApiClientFactory) -> None:
    client = await api_client()
    response = await client.get("/console")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    _secured(response.headers)
    page = await response.text()
    assert "<script>" not in page
    assert "style=" not in page
    assert "onclick" not in page


async def test_every_file_the_page_names_is_served_with_its_type(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    page = await (await client.get("/console")).text()
    names = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page)
    assert len(names) >= 3
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in names:
        response = await client.get(name)
        assert response.status == 200, name
        assert response.content_type == types[name[name.rindex(".") :]]
        _secured(response.headers)


async def test_a_module_imports_only_files_that_exist(api_client: ApiClientFactory) -> None:
    client = await api_client()
    for module in ("app.js", "tasks.js", "task.js", "more.js", "api.js", "dom.js"):
        source = await (await client.get(f"/console/static/{module}")).text()
        assert "innerHTML" not in source
        assert "eval(" not in source
        for imported in re.findall(r'from "\./([^"]+)"', source):
            assert (await client.get(f"/console/static/{imported}")).status == 200, imported


async def test_an_unchanged_file_revalidates_as_304(api_client: ApiClientFactory) -> None:
    client = await api_client()
    first = await client.get("/console/static/app.js")
    etag = first.headers["ETag"]
    again = await client.get("/console/static/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    _secured(again.headers)


async def test_a_file_is_gzipped_for_a_client_that_takes_gzip(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    plain = await client.get("/console/static/app.js", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    zipped = await client.get("/console/static/app.js", headers={"Accept-Encoding": "gzip, br"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    assert int(zipped.headers["Content-Length"]) < int(plain.headers["Content-Length"]) / 2
    assert await zipped.text() == await plain.text()
    _secured(zipped.headers)
    refused = await client.get("/console/static/app.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers


async def test_each_encoding_revalidates_against_its_own_etag(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    gzip_etag = (await client.get("/console", headers={"Accept-Encoding": "gzip"})).headers["ETag"]
    again = await client.get(
        "/console", headers={"Accept-Encoding": "gzip", "If-None-Match": f'"x", W/{gzip_etag}'}
    )
    assert again.status == 304
    plain = await client.get(
        "/console", headers={"Accept-Encoding": "identity", "If-None-Match": gzip_etag}
    )
    assert plain.status == 200
    assert plain.headers["ETag"] != gzip_etag


@pytest.mark.parametrize(
    "path", ["/console/static/nope.js", "/console/static/index.html", "/console/static/..%2fapp.py"]
)
async def test_unknown_files_are_404_problems(api_client: ApiClientFactory, path: str) -> None:
    client = await api_client()
    response = await client.get(path)
    assert response.status == 404
    assert response.content_type == "application/problem+json"


async def test_the_config_needs_a_key_and_names_the_tenant(api_client: ApiClientFactory) -> None:
    client = await api_client()
    assert (await client.get("/v1/console/config")).status == 401
    response = await client.get("/v1/console/config", headers=ACME)
    assert response.headers["Cache-Control"] == "no-store"
    assert await response.json() == {
        "tenant": "acme",
        "admin": False,
        "trace_url": "https://grafana.example/explore?trace={trace_id}",
    }
    body = await (await client.get("/v1/console/config", headers=OPS)).json()
    assert body["admin"] is True


ADMIN_CALLS = [
    ("GET", "/v1/admin/queues", None),
    ("GET", "/v1/admin/dead-letters", None),
    ("POST", "/v1/admin/dead-letters/replay", {"all": True}),
    ("POST", "/v1/admin/dead-letters/purge", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_operator_endpoints_refuse_other_tenants(
    api_client: ApiClientFactory, method: str, path: str, body: Any
) -> None:
    client = await api_client()
    assert (await client.request(method, path, json=body)).status == 401
    response = await client.request(method, path, json=body, headers=ACME)
    assert response.status == 403
    assert (await response.json())["type"] == "urn:ai-orchestrator:problem:forbidden"


async def test_queues_show_backlog_pending_and_workers(api_client: ApiClientFactory) -> None:
    broker = MemoryBroker()
    await broker.ensure_group("tasks", "workers")  # as a worker does at start
    client = await api_client(broker=broker)
    assert (await client.post("/v1/tasks", json={"prompt": "hi"}, headers=ACME)).status == 202
    body = await (await client.get("/v1/admin/queues", headers=OPS)).json()
    assert body["priorities"] == {"high": 0, "normal": 1, "low": 0}  # not dispatched yet
    assert body["workers"] == []
    assert [(q["stream"], q["group"]) for q in body["queues"]] == [("tasks", "workers")] * 4
    assert [(q["priority"], q["backlog"], q["pending"]) for q in body["queues"]] == [
        (None, 0, 0),
        ("high", 0, 0),
        ("normal", 1, 0),
        ("low", 0, 0),
    ]


async def test_queues_show_each_priority_and_the_stream_apart(
    api_client: ApiClientFactory,
) -> None:
    broker = MemoryBroker()
    await broker.ensure_group("tasks", "workers")
    client = await api_client(broker=broker)
    for n, priority in enumerate(("high", "low", "low")):
        body = {"prompt": f"hi {n}", "priority": priority}
        assert (await client.post("/v1/tasks", json=body, headers=ACME)).status == 202
    consumer = broker.consume("tasks", "workers", "w", ConsumeOptions(batch_size=1))
    running = await anext(consumer)  # the high one, dispatched and being worked on
    body = await (await client.get("/v1/admin/queues", headers=OPS)).json()
    assert body["priorities"] == {"high": 0, "normal": 0, "low": 2}
    rows = {q["priority"]: (q["backlog"], q["pending"]) for q in body["queues"]}
    assert rows == {None: (0, 1), "high": (0, 0), "normal": (0, 0), "low": (2, 0)}
    await running.ack()
    await consumer.aclose()


async def _dead_letter(broker: MemoryBroker, task_id: str) -> None:
    task = TaskMessage(task_id, "acme", (ChatMessage("user", "hello"),), model="echo")
    await broker.publish("tasks", Message(payload=encode_task(task), id=task_id))
    consumer = broker.consume("tasks", "workers", "test")
    delivery = await anext(consumer)
    await delivery.dead_letter("test: gave up")
    await consumer.aclose()


async def test_a_dead_letter_is_listed_replayed_and_purged(api_client: ApiClientFactory) -> None:
    broker = MemoryBroker()
    client = await api_client(broker=broker)
    await _dead_letter(broker, "task-dead-1")
    page = await (await client.get("/v1/admin/dead-letters", headers=OPS)).json()
    assert page["object"] == "list"
    assert page["has_more"] is False
    [letter] = page["data"]
    assert letter["task_id"] == "task-dead-1"
    assert letter["tenant"] == "acme"
    assert letter["reason"] == "test: gave up"

    missing = await client.post(
        "/v1/admin/dead-letters/replay", json={"task_ids": ["other"]}, headers=OPS
    )
    assert missing.status == 409
    replayed = await client.post(
        "/v1/admin/dead-letters/replay", json={"task_ids": ["task-dead-1"]}, headers=OPS
    )
    assert replayed.status == 200
    assert [r["task_id"] for r in (await replayed.json())["replayed"]] == ["task-dead-1"]
    task = await (await client.get("/v1/tasks/task-dead-1", headers=ACME)).json()
    assert task["status"] == "queued"

    await _dead_letter(broker, "task-dead-2")
    purged = await client.post("/v1/admin/dead-letters/purge", json={}, headers=OPS)
    assert await purged.json() == {"purged": 1}
    page = await (await client.get("/v1/admin/dead-letters", headers=OPS)).json()
    assert page["data"] == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/admin/dead-letters/replay", {}),
        ("/v1/admin/dead-letters/replay", {"all": True, "task_ids": ["x"]}),
        ("/v1/admin/dead-letters/replay", {"task_ids": "x"}),
        ("/v1/admin/dead-letters/purge", {"older_than_seconds": -1}),
        ("/v1/admin/dead-letters/purge", []),
    ],
)
async def test_bad_operator_bodies_are_400(
    api_client: ApiClientFactory, path: str, body: Any
) -> None:
    client = await api_client()
    assert (await client.post(path, json=body, headers=OPS)).status == 400


def test_admin_tenants_and_the_trace_url_are_read_from_the_environment() -> None:
    env = {
        "API_KEYS": "a:k",
        "ADMIN_TENANTS": "ops, root",
        "CONSOLE_TRACE_URL": "http://g/{trace_id}",
    }
    settings = ApiSettings.from_env(env)
    assert settings.admin_tenants == {"ops", "root"}
    assert settings.console_trace_url == "http://g/{trace_id}"
    assert attrs.evolve(settings).admin_tenants == {"ops", "root"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONSOLE_TRACE_URL", "http://grafana/explore"),
        ("CONSOLE_TRACE_URL", "javascript:alert(1)//{trace_id}"),
        ("ADMIN_TENANTS", "bad tenant!"),
    ],
)
def test_bad_console_settings_stop_startup(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        ApiSettings.from_env({"API_KEYS": "a:k", name: value})
