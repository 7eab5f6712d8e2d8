"""The wire contract's codecs: each one equal to what cattrs generates for its class, and
the decoders' refusals."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from cattrs.preconf.orjson import make_converter

from orchestrator_tasks import (
    TASK_FIELDS,
    ChatMessage,
    ErrorInfo,
    EventKind,
    InvalidResultEvent,
    InvalidTask,
    ResultEvent,
    TaskMessage,
    Usage,
    converter,
    decode_event,
    decode_task,
    encode_event,
    encode_task,
    event_payload,
    messages_of,
)

#: cattrs with no hooks of ours: what its generated functions make of the contract classes.
generated = make_converter()

FULL_TASK = TaskMessage(
    task_id="t1",
    tenant="a",
    messages=(
        ChatMessage(role="system", content="s"),
        ChatMessage(role="user", content="hi", name="ann"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content="and?"),
    ),
    model="echo",
    parameters={"latency_ms": 5, "response_format": {"type": "json_object"}},
    submitted_at=1.5,
    prior_attempts=5,
    priority="high",
    deltas=False,
)
MINIMAL_TASK = TaskMessage(task_id="t1", tenant="a", messages=messages_of("hi"))


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"kind": EventKind.DELTA, "text": "chunk"},
        {"kind": EventKind.SUCCEEDED, "text": "all", "usage": Usage(3, 4), "finish_reason": "stop"},
        {"kind": EventKind.FAILED, "error": ErrorInfo(type="timeout", message="late")},
        {"provider": "echo", "model": "echo"},
    ],
)
def test_the_event_codecs_are_what_cattrs_generates(extra: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "task_id": "t1",
        "tenant": "a",
        "kind": EventKind.STARTED,
        "attempt": 2,
        "seq": 5,
        "at": 1700000000.25,
        **extra,
    }

    event = ResultEvent(**fields)
    payload = event_payload(**fields)

    assert payload == generated.unstructure(event)
    assert encode_event(event) == payload
    assert converter.unstructure(event) == payload
    assert decode_event(payload) == generated.structure(payload, ResultEvent) == event
    assert converter.structure(payload, ResultEvent) == event


@pytest.mark.parametrize("task", [FULL_TASK, MINIMAL_TASK], ids=["full", "minimal"])
def test_the_task_codecs_are_what_cattrs_generates(task: TaskMessage) -> None:
    payload = encode_task(task)

    assert payload == generated.unstructure(task)
    assert converter.unstructure(task) == payload
    assert decode_task(payload) == generated.structure(payload, TaskMessage) == task
    assert converter.structure(payload, TaskMessage) == task


def test_a_minimal_task_payload_decodes_with_the_defaults() -> None:
    payload = {"task_id": "t1", "tenant": "a", "messages": [{"role": "user", "content": "hi"}]}

    assert decode_task(payload) == MINIMAL_TASK


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    payload = {**encode_task(MINIMAL_TASK), "urgency": 3}

    assert decode_task(payload) == MINIMAL_TASK


def test_an_older_apis_prompt_and_system_become_a_conversation() -> None:
    old = {"task_id": "t1", "tenant": "a", "prompt": "hi", "system": "s", "model": None}

    assert decode_task(old).messages == (
        ChatMessage(role="system", content="s"),
        ChatMessage(role="user", content="hi"),
    )
    assert decode_task({"task_id": "t1", "tenant": "a", "prompt": "hi"}) == MINIMAL_TASK


def test_the_shorthand_is_a_system_message_then_one_user_message() -> None:
    assert messages_of("p") == (ChatMessage(role="user", content="p"),)
    assert messages_of("p", "s") == (
        ChatMessage(role="system", content="s"),
        ChatMessage(role="user", content="p"),
    )
    assert messages_of("p", "") == messages_of("p")


USER: list[dict[str, Any]] = [{"role": "user", "content": "p"}]


@pytest.mark.parametrize(
    ("payload", "reason", "salvaged"),
    [
        ("text", "not an object", None),
        ({"tenant": "a", "messages": USER}, "task_id", None),
        ({"task_id": "", "tenant": "a", "messages": USER}, "task_id", None),
        ({"task_id": 7, "tenant": "a", "messages": USER}, "task_id", None),
        ({"task_id": "t", "tenant": "a"}, "messages", "t"),
        ({"task_id": "t", "tenant": "a", "prompt": None}, "messages", "t"),
        ({"task_id": "t", "tenant": "a", "prompt": "p", "system": 3}, "system", "t"),
        ({"task_id": "t", "tenant": "a", "messages": []}, "messages", "t"),
        ({"task_id": "t", "tenant": "a", "messages": "hi"}, "messages", "t"),
        ({"task_id": "t", "tenant": "a", "messages": [*USER, 5]}, "messages[1] ", "t"),
        (
            {
                "task_id": "t",
                "tenant": "a",
                "messages": [*USER * 3, {"role": "bot", "content": ""}],
            },
            "messages[3].role",
            "t",
        ),
        (
            {"task_id": "t", "tenant": "a", "messages": [{"role": "user"}]},
            "messages[0].content",
            "t",
        ),
        (
            {"task_id": "t", "tenant": "a", "messages": [{**USER[0], "name": 1}]},
            "messages[0].name",
            "t",
        ),
        ({"task_id": "t", "tenant": "a", "messages": USER, "model": 4}, "model", "t"),
        ({"task_id": "t", "tenant": "a", "messages": USER, "parameters": [1]}, "parameters", "t"),
        (
            {"task_id": "t", "tenant": "a", "messages": USER, "submitted_at": "x"},
            "submitted_at",
            "t",
        ),
        (
            {"task_id": "t", "tenant": "a", "messages": USER, "prior_attempts": -1},
            "prior_attempts",
            "t",
        ),
        (
            {"task_id": "t", "tenant": "a", "messages": USER, "prior_attempts": 2.0},
            "prior_attempts",
            "t",
        ),
        (
            {"task_id": "t", "tenant": "a", "messages": USER, "prior_attempts": True},
            "prior_attempts",
            "t",
        ),
        ({"task_id": "t", "tenant": "a", "messages": USER, "deltas": "no"}, "deltas", "t"),
        ({"task_id": "t", "tenant": "a", "messages": USER, "deltas": None}, "deltas", "t"),
    ],
)
def test_a_bad_payload_is_an_invalid_task(payload: Any, reason: str, salvaged: str | None) -> None:
    with pytest.raises(InvalidTask) as raised:
        decode_task(payload)

    assert reason in raised.value.reason
    assert raised.value.task_id == salvaged


def test_the_task_decoder_reads_every_field_of_the_contract() -> None:
    assert {field.name for field in attrs.fields(TaskMessage)} == TASK_FIELDS


def test_the_converter_refuses_a_bad_task_as_the_decoder_does() -> None:
    with pytest.raises(InvalidTask, match=r"messages\[0\]\.role"):
        converter.structure(
            {"task_id": "t", "tenant": "a", "messages": [{"role": "x", "content": "c"}]},
            TaskMessage,
        )


def test_an_event_with_impossible_attempts_or_seqs_is_refused() -> None:
    payload = event_payload(
        task_id="t1", tenant="a", kind=EventKind.STARTED, attempt=1, seq=0, at=1.0
    )
    assert decode_event(payload).kind is EventKind.STARTED
    with pytest.raises(InvalidResultEvent, match="out of range"):
        decode_event({**payload, "attempt": 0})
    with pytest.raises(InvalidResultEvent, match="out of range"):
        decode_event({**payload, "seq": -1})
    with pytest.raises(InvalidResultEvent, match="empty task_id"):
        decode_event({**payload, "task_id": ""})
    with pytest.raises(InvalidResultEvent, match="not a ResultEvent"):
        decode_event([1, 2])
    with pytest.raises(InvalidResultEvent, match="not a ResultEvent"):
        decode_event({**payload, "kind": "exploded"})
