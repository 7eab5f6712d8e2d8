"""``POST /v1/chat/completions`` maps OpenAI's ``service_tier`` (and our ``priority``) onto
the task's priority."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator_api.chat import _BadRequest, submission_body

BODY: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("extra", "priority"),
    [
        ({}, None),
        ({"service_tier": "auto"}, None),
        ({"service_tier": "default"}, None),
        ({"service_tier": "priority"}, "high"),
        ({"service_tier": "flex"}, "low"),
        ({"priority": "high"}, "high"),
        ({"priority": "low", "service_tier": "priority"}, "low"),
    ],
)
def test_service_tier_and_priority_become_the_tasks_priority(
    extra: dict[str, Any], priority: str | None
) -> None:
    body, _, _ = submission_body({**BODY, **extra})
    assert body.get("priority") == priority


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"service_tier": "scale"}, "service_tier"),
        ({"service_tier": 1, "priority": "high"}, "service_tier"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": ["high"]}, "priority"),
    ],
)
def test_an_unknown_tier_or_priority_is_a_400_naming_it(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(_BadRequest) as raised:
        submission_body({**BODY, **extra})
    assert raised.value.param == param
