"""``GET /v1/tasks``: the query it takes, checked by hand like the submission body.

``limit`` (1 to ``MAX_LIMIT``, default ``DEFAULT_LIMIT``), ``after`` (a task id: the last
one of the previous page) and ``status``. A bad or repeated parameter is a 400 problem naming
it; other parameters are ignored, as OpenAI's list endpoints do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs
from multidict import MultiMapping

from .model import TaskStatus
from .problems import TYPE_VALIDATION, FieldError, Problem

__all__ = ["DEFAULT_LIMIT", "MAX_AFTER_CHARS", "MAX_LIMIT", "ListQuery", "parse_list_query"]

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
#: The longest ``after`` accepted: a task id is 32 hex digits; GET /v1/tasks/{id} takes 64.
MAX_AFTER_CHARS: Final = 64
_STATUSES: Final[Mapping[str, TaskStatus]] = {status.value: status for status in TaskStatus}
_KNOWN: Final = ("limit", "after", "status")


@attrs.frozen
class ListQuery:
    """A valid ``GET /v1/tasks`` query."""

    limit: int = DEFAULT_LIMIT
    after: str | None = None
    status: TaskStatus | None = None


def invalid_query(errors: list[FieldError]) -> Problem:
    """The 400 problem for query parameters that are not valid (``errors`` names them)."""
    fields = ", ".join(sorted({e["field"] for e in errors}))
    return Problem(
        400,
        f"The query is invalid ({fields}).",
        type=TYPE_VALIDATION,
        title="Invalid request",
        errors=errors,
    )


def parse_list_query(query: MultiMapping[str]) -> ListQuery:
    """The query of ``GET /v1/tasks``; a 400 problem naming each parameter that is wrong."""
    errors: list[FieldError] = []
    values: dict[str, str] = {}
    for name in _KNOWN:
        given = query.getall(name, [])
        if len(given) > 1:
            errors.append({"field": name, "message": "given more than once"})
        elif given:
            values[name] = given[0]
    limit = DEFAULT_LIMIT
    if "limit" in values:
        raw = values["limit"]
        # ASCII digits only: int() would also take " 5", "+5", "5_0" and other scripts' digits.
        if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT:
            limit = int(raw)
        else:
            errors.append(
                {"field": "limit", "message": f"must be a whole number from 1 to {MAX_LIMIT}"}
            )
    after = values.get("after")
    if after is not None and not 1 <= len(after) <= MAX_AFTER_CHARS:
        errors.append(
            {"field": "after", "message": f"must be a task id (1 to {MAX_AFTER_CHARS} characters)"}
        )
    status = None
    if "status" in values:
        status = _STATUSES.get(values["status"])
        if status is None:
            errors.append({"field": "status", "message": f"must be one of {', '.join(_STATUSES)}"})
    if errors:
        raise invalid_query(errors)
    return ListQuery(limit=limit, after=after, status=status)
