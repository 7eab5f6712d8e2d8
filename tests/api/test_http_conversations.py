"""Conversations (``messages``) and structured output (``response_format``) at
``POST /v1/tasks``: what is accepted, what is a 400 naming the field, what is published, and
the prompt cache over whole conversations (with a real worker)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator_api.config import ApiSettings
from orchestrator_tasks import ChatMessage, messages_of
from tests.api.conftest import ACME, API_KEYS, ApiClientFactory, api_state
from tests.api.test_http_cache import Running, finish, running, submit, wait_done
from tests.api.test_http_openapi import fetch_document, validator
from tests.api.test_http_tasks import problem_of, published

__all__ = ["running"]  # the fixture, imported to be used here

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi", "name": "ann"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "and then?"},
]
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "strict": True,
    },
}


async def test_a_conversation_is_published_in_order(api_client: ApiClientFactory) -> None:
    client = await api_client()

    await submit(client, {"messages": CONVERSATION, "model": "echo"})

    [message] = await published(api_state(client).broker)  # type: ignore[arg-type]
    assert message.messages == (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi", name="ann"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content="and then?"),
    )


async def test_prompt_and_system_are_a_system_message_then_a_user_message(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()

    await submit(client, {"prompt": "p", "system": "s"})

    [message] = await published(api_state(client).broker)  # type: ignore[arg-type]
    assert message.messages == messages_of("p", "s")


def _with(index: int, **fields: Any) -> list[dict[str, Any]]:
    turns = [dict(turn) for turn in CONVERSATION]
    turns[index].update(fields)
    return turns


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": _with(3, role="bot")}, "messages[3].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": _with(1, content=7)}, "messages[1].content"),
        ({"messages": _with(1, content="")}, "messages[1].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": _with(2, name=3)}, "messages[2].name"),
        ({"messages": _with(2, name="x" * 65)}, "messages[2].name"),
        ({"messages": _with(0, tool_calls=[])}, "messages[0].tool_calls"),
        ({"messages": [*CONVERSATION, "hi"]}, "messages[4]"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "system", "content": "s"}]}, "messages"),
        ({"messages": CONVERSATION, "prompt": "x"}, "prompt"),
        ({"messages": CONVERSATION, "system": "x"}, "system"),
        ({}, "prompt"),
    ],
)
async def test_a_bad_conversation_is_a_400_naming_the_field(
    api_client: ApiClientFactory, body: dict[str, Any], field: str
) -> None:
    client = await api_client()

    response = await client.post("/v1/tasks", json=body, headers=ACME)

    problem = await problem_of(response, 400)
    assert [error["field"] for error in problem["errors"]] == [field]
    assert await published(api_state(client).broker) == []  # type: ignore[arg-type]


async def test_max_prompt_chars_counts_every_message(api_client: ApiClientFactory) -> None:
    client = await api_client(settings=ApiSettings(api_keys=API_KEYS, max_prompt_chars=10))
    turns = [
        {"role": "system", "content": "x" * 4},
        {"role": "user", "content": "x" * 4},
        {"role": "assistant", "content": "x" * 2},
    ]
    await submit(client, {"messages": turns})  # 10 in all: at the limit

    turns.append({"role": "user", "content": "y"})
    response = await client.post("/v1/tasks", json={"messages": turns}, headers=ACME)
    problem = await problem_of(response, 413)
    assert "11" in problem["detail"]
    response = await client.post(
        "/v1/tasks", json={"prompt": "x" * 6, "system": "x" * 5}, headers=ACME
    )
    await problem_of(response, 413)


# -- response_format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "value"),
    [
        ("openai/gpt-4o", {"type": "xml"}),
        ("openai/gpt-4o", "json"),
        ("openai/gpt-4o", {"type": "json_object", "schema": {}}),
        ("openai/gpt-4o", {"type": "json_schema"}),
        ("openai/gpt-4o", {"type": "json_schema", "json_schema": {"schema": {}}}),
        ("gemini/gemini-2.5-flash", {"type": "json_schema", "json_schema": {"name": "a b"}}),
        ("gemini/gemini-2.5-flash", {"type": "json_schema", "json_schema": {"name": "a"}}),
        ("openai/gpt-4o", {**SCHEMA_FORMAT, "json_schema": {"name": "a", "schema": {}, "x": 1}}),
        (
            "openai/gpt-4o",
            {**SCHEMA_FORMAT, "json_schema": {"name": "a", "schema": [], "strict": 1}},
        ),
        # echo cannot follow a schema: refused at submit rather than answered wrongly
        ("echo", SCHEMA_FORMAT),
    ],
)
async def test_a_bad_or_impossible_response_format_is_a_400_naming_it(
    api_client: ApiClientFactory, model: str, value: Any
) -> None:
    client = await api_client()
    body = {"prompt": "x", "model": model, "parameters": {"response_format": value}}

    response = await client.post("/v1/tasks", json=body, headers=ACME)

    problem = await problem_of(response, 400)
    assert [error["field"] for error in problem["errors"]] == ["parameters.response_format"]


@pytest.mark.parametrize(
    ("model", "value"),
    [
        ("openai/gpt-4o", {"type": "json_object"}),
        ("openai/gpt-4o", SCHEMA_FORMAT),
        ("gemini/gemini-2.5-flash", SCHEMA_FORMAT),
        ("echo", {"type": "json_object"}),
        ("echo", {"type": "text"}),
        (None, SCHEMA_FORMAT),
    ],
)
async def test_a_response_format_is_accepted_and_passed_on(
    api_client: ApiClientFactory, model: str | None, value: Any
) -> None:
    client = await api_client()

    await submit(client, {"prompt": "x", "model": model, "parameters": {"response_format": value}})

    [message] = await published(api_state(client).broker)  # type: ignore[arg-type]
    assert message.parameters == {"response_format": value}


# -- the document ------------------------------------------------------------------------------


async def test_the_document_rejects_the_conversations_the_api_rejects(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    schema = validator(
        await fetch_document(client), {"$ref": "#/components/schemas/TaskSubmission"}
    )
    rejected = [
        {"messages": _with(3, role="bot")},
        {"messages": _with(1, content=7)},
        {"messages": _with(0, tool_calls=[])},
        {"messages": []},
        {"messages": [{"role": "system", "content": "s"}]},
        {"messages": CONVERSATION, "prompt": "x"},
        {"messages": CONVERSATION, "system": "x"},
        {},
        {"prompt": "x", "parameters": {"response_format": {"type": "xml"}}},
        {"prompt": "x", "parameters": {"response_format": {"type": "json_schema"}}},
    ]
    for body in rejected:
        response = await client.post("/v1/tasks", json=body, headers=ACME)
        assert response.status == 400, body
        assert not schema.is_valid(body), body
    accepted = [
        {"messages": CONVERSATION},
        {"messages": [{"role": "user", "content": "x", "name": None}], "model": "echo"},
        {"prompt": "x", "parameters": {"response_format": {"type": "json_object"}}},
        {"prompt": "x", "model": "openai/m", "parameters": {"response_format": SCHEMA_FORMAT}},
    ]
    for body in accepted:
        assert schema.is_valid(body), body
        await submit(client, body)


# -- the prompt cache over conversations (a real worker) ---------------------------------------


async def test_echo_answers_the_last_user_message(running: Running) -> None:
    task = await wait_done(
        running.client, (await submit(running.client, {"messages": CONVERSATION}))["id"]
    )

    assert task["result"]["text"] == "and then?"


async def test_echo_answers_json_when_asked(running: Running) -> None:
    body = {
        "prompt": "hi there",
        "model": "echo",
        "parameters": {"response_format": {"type": "json_object"}},
    }
    task = await wait_done(running.client, (await submit(running.client, body))["id"])

    assert task["result"]["text"] == '{"text":"hi there"}'


async def test_conversations_ending_alike_do_not_share_an_answer(running: Running) -> None:
    client = running.client
    other = _with(2, content="goodbye")  # same last user message, another conversation
    first = await wait_done(client, (await submit(client, {"messages": CONVERSATION}))["id"])

    second = await submit(client, {"messages": other})

    assert (second["status"], second["cached"], second["joined"]) == ("queued", False, False)
    await wait_done(client, second["id"])
    assert first["result"]["text"] == "and then?"
    assert running.echo.calls == 2


async def test_the_same_conversation_is_answered_from_the_cache(running: Running) -> None:
    client = running.client
    await wait_done(client, (await submit(client, {"messages": CONVERSATION}))["id"])

    again = await submit(client, {"messages": CONVERSATION})

    assert (again["status"], again["cached"]) == ("succeeded", True)
    assert running.echo.calls == 1


async def test_a_prompt_and_its_one_message_conversation_share_a_cache_entry(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    first = await submit(client, {"prompt": "p", "system": "s"})
    await finish(client, first["id"])

    same = [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}]
    second = await submit(client, {"messages": same})

    assert (second["status"], second["cached"]) == ("succeeded", True)


async def test_an_idempotency_key_replay_must_ask_the_same_conversation(
    api_client: ApiClientFactory,
) -> None:
    client = await api_client()
    headers = {**ACME, "Idempotency-Key": "conv-1"}
    first = await client.post("/v1/tasks", json={"messages": CONVERSATION}, headers=headers)
    assert first.status == 202

    replay = await client.post("/v1/tasks", json={"messages": CONVERSATION}, headers=headers)
    changed = await client.post(
        "/v1/tasks", json={"messages": _with(2, content="no")}, headers=headers
    )

    assert replay.status == 200
    assert (await replay.json())["id"] == (await first.json())["id"]
    await problem_of(changed, 422)
