"""Validation of ``POST /v1/tasks`` bodies, by hand: it runs on every submission.

A schema library would be several times slower here; the OpenAPI document in ``openapi.py``
describes the same rules, and the tests hold the two together.
"""

from __future__ import annotations

from typing import Any, Final, cast

import attrs
import orjson

from orchestrator_tasks.parameters import validate_parameters

from .problems import (
    TYPE_MALFORMED_JSON,
    TYPE_TOO_LARGE,
    TYPE_VALIDATION,
    FieldError,
    Problem,
)

__all__ = ["MAX_IDEMPOTENCY_KEY", "MAX_MODEL_CHARS", "Submission", "parse_submission"]

MAX_MODEL_CHARS: Final = 200
MAX_IDEMPOTENCY_KEY: Final = 255
_FIELDS: Final = frozenset({"prompt", "model", "system", "parameters", "metadata", "cache"})


@attrs.frozen
class Submission:
    """A valid task submission."""

    prompt: str
    model: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = attrs.field(factory=dict)
    metadata: dict[str, Any] = attrs.field(factory=dict)
    #: Whether the tenant's prompt cache applies (``"cache": false`` opts out).
    cache: bool = True


def parse_submission(body: bytes, *, max_prompt_chars: int) -> Submission:
    """The submission in ``body``, or a ``Problem``: 400 with per-field ``errors`` for invalid
    input, 400 for malformed JSON, 413 for a prompt (or system prompt) over the limit."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(
            400, f"The body is not valid JSON: {exc.msg}.", type=TYPE_MALFORMED_JSON
        ) from None
    if type(data) is not dict:
        raise _invalid([{"field": "", "message": "the body must be a JSON object"}])

    errors: list[FieldError] = []
    if not _FIELDS.issuperset(data):
        errors.extend(
            {"field": name, "message": "unknown field"} for name in data if name not in _FIELDS
        )

    prompt = data.get("prompt")
    if type(prompt) is not str or not prompt.strip():
        message = "required" if "prompt" not in data else "must be a non-empty string"
        errors.append({"field": "prompt", "message": message})
    model = _optional_text(data, "model", errors)
    if model is not None and (not model.strip() or len(model) > MAX_MODEL_CHARS):
        errors.append({"field": "model", "message": f"must be 1 to {MAX_MODEL_CHARS} characters"})
    system = _optional_text(data, "system", errors)
    parameters = _optional_object(data, "parameters", errors)
    if parameters:
        # Checked against the model's provider (the worker's own rules): an unsupported or
        # invalid parameter is a 400 now, not a failed task later.
        errors.extend(
            {"field": field, "message": message}
            for field, message in validate_parameters(model, parameters)
        )
    metadata = _optional_object(data, "metadata", errors)
    cache = data.get("cache")
    if cache is not None and type(cache) is not bool:
        errors.append({"field": "cache", "message": "must be true or false"})
    if errors:
        raise _invalid(errors)

    prompt = cast(str, prompt)  # checked above
    for name, text in (("prompt", prompt), ("system", system)):
        if text is not None and len(text) > max_prompt_chars:
            raise Problem(
                413,
                f"'{name}' is {len(text)} characters; the limit is {max_prompt_chars}.",
                type=TYPE_TOO_LARGE,
            )
    return Submission(
        prompt=prompt,
        model=model,
        system=system,
        parameters=parameters or {},
        metadata=metadata or {},
        cache=cache is not False,
    )


def _invalid(errors: list[FieldError]) -> Problem:
    fields = ", ".join(sorted({e["field"] or "(body)" for e in errors}))
    return Problem(
        400,
        f"The request body is invalid ({fields}).",
        type=TYPE_VALIDATION,
        title="Invalid request",
        errors=errors,
    )


def _optional_text(data: dict[str, Any], name: str, errors: list[FieldError]) -> str | None:
    value = data.get(name)
    if value is None or type(value) is str:
        return value
    errors.append({"field": name, "message": "must be a string"})
    return None


def _optional_object(
    data: dict[str, Any], name: str, errors: list[FieldError]
) -> dict[str, Any] | None:
    value = data.get(name)
    if value is None or type(value) is dict:
        return value
    errors.append({"field": name, "message": "must be a JSON object"})
    return None
