"""The wire contract between the API and the workers: what travels on the two streams.

``TaskMessage`` is the payload of an entry on the tasks stream (``REDIS_STREAM_ID``);
``ResultEvent`` the payload of an entry on the results stream (``REDIS_RESULTS_STREAM_ID``).
Both go through the broker's ``Message.payload`` as plain JSON via ``converter`` below.

Every result event carries ``attempt`` (the task delivery's delivery count) and ``seq``
(0, 1, 2, ... within that attempt, in the order the worker published them), so the API can
apply them in order and drop redelivered duplicates: ``(task_id, attempt, seq)`` identifies
an event.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
from cattrs.preconf.orjson import make_converter


class EventKind(enum.StrEnum):
    STARTED = "started"  # an attempt began (attempt > 1 means earlier text is void)
    DELTA = "delta"  # a chunk of answer text (coalesced, ~100 ms worth)
    SUCCEEDED = "succeeded"  # terminal: the whole answer and usage
    FAILED = "failed"  # terminal: the error


@attrs.frozen
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@attrs.frozen
class ErrorInfo:
    type: str  # e.g. "timeout", "rate_limit", "invalid_request", "internal"
    message: str


@attrs.frozen
class TaskMessage:
    """A task as the API publishes it."""

    task_id: str
    tenant: str
    prompt: str
    model: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = attrs.field(factory=dict)
    submitted_at: float = 0.0


@attrs.frozen
class ResultEvent:
    """One step of one attempt of a task, as a worker publishes it."""

    task_id: str
    tenant: str
    kind: EventKind
    attempt: int
    seq: int
    at: float
    text: str = ""  # DELTA: the chunk; SUCCEEDED: the whole answer
    provider: str | None = None
    model: str | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    finish_reason: str | None = None
    #: SUCCEEDED: what the answer cost in US dollars, from the worker's price table
    #: (``MODEL_PRICES``) and ``usage``; None when the model has no price or no usage.
    cost_usd: float | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in (EventKind.SUCCEEDED, EventKind.FAILED)


#: The one converter for these payloads (JSON-compatible dicts in and out).
converter = make_converter()
