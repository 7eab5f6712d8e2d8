"""The wire contract's codecs: each one equal to what cattrs generates for its class, and
the decoders' refusals."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from cattrs.preconf.orjson import make_converter

from orchestrator_tasks import (
    TASK_FIELDS,
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
)

#: cattrs with no hooks of ours: what its generated functions make of the contract classes.
generated = make_converter()

FULL_TASK = TaskMessage(
    task_id="t1",
    tenant="a",
    prompt="hi",
    model="echo",
    system="s",
    parameters={"latency_ms": 5},
    submitted_at=1.5,
)


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


@pytest.mark.parametrize(
    "task", [FULL_TASK, TaskMessage(task_id="t1", tenant="a", prompt="hi")], ids=["full", "minimal"]
)
def test_the_task_codecs_are_what_cattrs_generates(task: TaskMessage) -> None:
    payload = encode_task(task)

    assert payload == generated.unstructure(task)
    assert converter.unstructure(task) == payload
    assert decode_task(payload) == generated.structure(payload, TaskMessage) == task
    assert converter.structure(payload, TaskMessage) == task


def test_a_minimal_task_payload_decodes_with_the_defaults() -> None:
    assert decode_task({"task_id": "t1", "tenant": "a", "prompt": "hi"}) == TaskMessage(
        task_id="t1", tenant="a", prompt="hi"
    )


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    payload = {"task_id": "t1", "tenant": "a", "prompt": "hi", "priority": 3}

    assert decode_task(payload).task_id == "t1"


@pytest.mark.parametrize(
    ("payload", "reason", "salvaged"),
    [
        ("text", "not an object", None),
        ({"tenant": "a", "prompt": "p"}, "task_id", None),
        ({"task_id": "", "tenant": "a", "prompt": "p"}, "task_id", None),
        ({"task_id": 7, "tenant": "a", "prompt": "p"}, "task_id", None),
        ({"task_id": "t", "tenant": "a"}, "prompt", "t"),
        ({"task_id": "t", "tenant": "a", "prompt": None}, "prompt", "t"),
        ({"task_id": "t", "tenant": "a", "prompt": "p", "model": 4}, "model", "t"),
        ({"task_id": "t", "tenant": "a", "prompt": "p", "parameters": [1]}, "parameters", "t"),
        ({"task_id": "t", "tenant": "a", "prompt": "p", "submitted_at": "x"}, "submitted_at", "t"),
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
    with pytest.raises(InvalidTask, match="prompt"):
        converter.structure({"task_id": "t", "tenant": "a"}, TaskMessage)


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
