"""The wire form of result events, and the task payload parser."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from orchestrator_worker import InvalidTask, ResultEvent, TaskMessage, parse_task
from orchestrator_worker.events import event_payload
from orchestrator_worker.messages import ErrorInfo, EventKind, Usage, converter
from orchestrator_worker.runner import PARSED_FIELDS


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
def test_event_payload_is_what_the_converter_makes(extra: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "task_id": "t1",
        "tenant": "a",
        "kind": EventKind.STARTED,
        "attempt": 2,
        "seq": 5,
        "at": 1700000000.25,
        **extra,
    }

    payload = event_payload(**fields)

    assert payload == converter.unstructure(ResultEvent(**fields))
    assert converter.structure(payload, ResultEvent) == ResultEvent(**fields)


def test_a_full_task_payload_parses() -> None:
    task = TaskMessage(
        task_id="t1",
        tenant="a",
        prompt="hi",
        model="echo",
        system="s",
        parameters={"latency_ms": 5},
        submitted_at=1.5,
    )

    assert parse_task(converter.unstructure(task)) == task


def test_a_minimal_task_payload_parses() -> None:
    assert parse_task({"task_id": "t1", "tenant": "a", "prompt": "hi"}) == TaskMessage(
        task_id="t1", tenant="a", prompt="hi"
    )


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    payload = {"task_id": "t1", "tenant": "a", "prompt": "hi", "priority": 3}

    assert parse_task(payload).task_id == "t1"


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
        parse_task(payload)

    assert reason in raised.value.reason
    assert raised.value.task_id == salvaged


def test_the_parser_reads_every_field_of_the_contract() -> None:
    assert {field.name for field in attrs.fields(TaskMessage)} == PARSED_FIELDS
