"""The shared answers' records are built field by field (attrs.evolve is several times slower,
and they are built per request): they must equal what attrs.evolve would make."""

from __future__ import annotations

import attrs

from orchestrator_api.model import TaskRecord, TaskResult, TaskStatus
from orchestrator_api.store._sharing import cache_hit, follow, reused
from orchestrator_tasks.messages import ErrorInfo, Usage

RESULT = TaskResult(
    text="Hello",
    provider="fake",
    model="m-1",
    usage=Usage(input_tokens=3, output_tokens=5),
    finish_reason="stop",
    cost_usd=0.0042,
)
OWN = TaskRecord(
    id="f" * 32,
    tenant="acme",
    status=TaskStatus.QUEUED,
    created_at=1_700_000_100.0,
    model="m-1",
    metadata={"mine": 1},
    trace_id="0" * 31 + "1",
    priority="high",
)


def test_every_field_is_named_by_the_builders() -> None:
    # A new field must be added to reused / cache_hit / follow (and this list). partial_text
    # is left out on purpose: a hit or a follower has none (a leader that others follow is
    # never cancelled for them, see TaskStore.cancel).
    assert [f.name for f in attrs.fields(TaskResult)] == [
        "text", "provider", "model", "usage", "finish_reason", "cost_usd",
    ]  # fmt: skip
    assert [f.name for f in attrs.fields(TaskRecord)] == [
        "id", "tenant", "status", "created_at", "model", "started_at", "finished_at",
        "attempts", "result", "error", "metadata", "trace_id", "cached", "joined",
        "partial_text", "priority",
    ]  # fmt: skip


def test_a_reused_result_is_the_result_with_nothing_spent() -> None:
    assert reused(RESULT) == attrs.evolve(RESULT, cost_usd=0.0)


def test_a_cache_hit_is_the_record_succeeded_with_the_reused_result() -> None:
    at = 1_700_000_200.0

    assert cache_hit(OWN, RESULT, at) == attrs.evolve(
        OWN,
        status=TaskStatus.SUCCEEDED,
        started_at=at,
        finished_at=at,
        attempts=0,
        result=reused(RESULT),
        cached=True,
    )


def test_a_follower_is_its_own_record_with_its_leaders_progress() -> None:
    error = ErrorInfo(type="rate_limit", message="slow down")

    shown = follow(
        OWN, "a" * 32, TaskStatus.FAILED, 1_700_000_150.0, 2, 1_700_000_160.0, RESULT, error
    )

    assert shown == attrs.evolve(
        OWN,
        status=TaskStatus.FAILED,
        started_at=1_700_000_150.0,
        finished_at=1_700_000_160.0,
        attempts=2,
        result=reused(RESULT),
        error=error,
        joined="a" * 32,
    )


def test_a_leaders_start_before_the_follower_existed_shows_as_its_creation() -> None:
    shown = follow(OWN, "a" * 32, TaskStatus.SUCCEEDED, 1_600_000_000.0, 1, 1_600_000_001.0)

    assert shown.started_at == shown.finished_at == OWN.created_at
    assert shown.cached is True
