"""Validation of ``POST /v1/tasks`` bodies, by hand: it runs on every submission.

A task asks either a ``prompt`` (with an optional ``system``), the shorthand for one user
message after a system message, or a conversation, ``messages``; never both. Either way the
``Submission`` holds the conversation.

A schema library would be several times slower here; the OpenAPI document in ``openapi.py``
describes the same rules, and the tests hold the two together.
"""

from __future__ import annotations

import re
from typing import Any, Final, cast

import attrs
import orjson

from orchestrator_tasks import (
    ROLES,
    TASK_PRIORITIES,
    ChatMessage,
    Role,
    TaskPriority,
    is_blank,
    messages_of,
)
from orchestrator_tasks.parameters import normalize_parameters, validate_parameters

from .problems import (
    TYPE_MALFORMED_JSON,
    TYPE_TOO_LARGE,
    TYPE_VALIDATION,
    FieldError,
    Problem,
)

__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_MESSAGES",
    "MAX_MODEL_CHARS",
    "MAX_NAME_CHARS",
    "MAX_NESTING",
    "Submission",
    "parse_submission",
    "valid_idempotency_key",
]

MAX_MODEL_CHARS: Final = 200
MAX_IDEMPOTENCY_KEY: Final = 255
#: An ``Idempotency-Key``: printable characters (as a header value arrives: Latin-1), not
#: only spaces. The same regular expression is the OpenAPI document's ``pattern``.
IDEMPOTENCY_KEY_PATTERN: Final = (
    r"^[\x20-\x7e\xa1-\xac\xae-\xff]*[\x21-\x7e\xa1-\xac\xae-\xff][\x20-\x7e\xa1-\xac\xae-\xff]*$"
)
_IDEMPOTENCY_KEY: Final = re.compile(IDEMPOTENCY_KEY_PATTERN)


def valid_idempotency_key(key: str) -> bool:
    """Whether ``key`` is a usable ``Idempotency-Key`` (``IDEMPOTENCY_KEY_PATTERN``, at most
    ``MAX_IDEMPOTENCY_KEY`` characters)."""
    return len(key) <= MAX_IDEMPOTENCY_KEY and _IDEMPOTENCY_KEY.match(key) is not None


#: Most turns in one conversation, and the longest participant ``name`` (OpenAI's limit).
MAX_MESSAGES: Final = 1000
#: How deep ``metadata`` and ``parameters`` may nest objects and arrays (the object itself is
#: level 1). JSON deeper than this is a 400 naming the field: the body parser reads 1,024
#: levels, but the JSON written to the store and the broker takes at most 254.
MAX_NESTING: Final = 32
_NESTED: Final = (dict, list)
MAX_NAME_CHARS: Final = 64
_FIELDS: Final = frozenset(
    {"prompt", "messages", "model", "system", "parameters", "metadata", "cache", "priority"}
)
_MESSAGE_FIELDS: Final = frozenset({"role", "content", "name"})
_ROLE_LIST: Final = ", ".join(ROLES)


@attrs.frozen
class Submission:
    """A valid task submission: the conversation to answer (from ``messages``, or from the
    ``prompt``/``system`` shorthand), and how."""

    messages: tuple[ChatMessage, ...]
    model: str | None = None
    parameters: dict[str, Any] = attrs.field(factory=dict)
    metadata: dict[str, Any] = attrs.field(factory=dict)
    #: Whether the tenant's prompt cache applies (``"cache": false`` opts out).
    cache: bool = True
    #: How urgent the task is within the tenant's share of the workers.
    priority: TaskPriority = "normal"
    #: Whether its text is published as it arrives (``TaskMessage.deltas``): False where
    #: nobody streams it, a non-streamed chat completion or a batch line.
    deltas: bool = True


def parse_submission(body: bytes, *, max_prompt_chars: int) -> Submission:
    """The submission in ``body``, or a ``Problem``: 400 with per-field ``errors`` for invalid
    input, 400 for malformed JSON, 413 for a conversation whose text (every message's
    content, or the prompt and the system prompt) is over ``max_prompt_chars``."""
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

    messages = _conversation(data, errors)
    model = _optional_text(data, "model", errors)
    if model is not None and (is_blank(model) or len(model) > MAX_MODEL_CHARS):
        errors.append({"field": "model", "message": f"must be 1 to {MAX_MODEL_CHARS} characters"})
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
    priority = data.get("priority")
    if priority is not None and priority not in TASK_PRIORITIES:
        errors.append(
            {"field": "priority", "message": f"must be one of {', '.join(TASK_PRIORITIES)}"}
        )
    if errors:
        raise _invalid(errors)

    assert messages is not None  # no errors: one of the two forms was valid
    size = sum(len(m.content) for m in messages)
    if size > max_prompt_chars:
        what = "'messages' are" if "messages" in data else "'prompt' and 'system' are"
        raise Problem(
            413,
            f"{what} {size} characters together; the limit is {max_prompt_chars}.",
            type=TYPE_TOO_LARGE,
        )
    return Submission(
        messages=messages,
        model=model,
        # 3.0 is a whole number to JSON Schema too: providers get it as 3.
        parameters=normalize_parameters(parameters) if parameters else {},
        metadata=metadata or {},
        cache=cache is not False,
        priority=priority if priority is not None else "normal",
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


def _conversation(data: dict[str, Any], errors: list[FieldError]) -> tuple[ChatMessage, ...] | None:
    """The conversation ``data`` asks: ``messages``, or the ``prompt``/``system`` shorthand
    (None, with ``errors``, when neither is valid)."""
    if "messages" not in data:
        prompt = data.get("prompt")
        system = _optional_text(data, "system", errors)
        if type(prompt) is not str or is_blank(prompt):
            message = (
                "required (or 'messages')" if "prompt" not in data else "must be a non-empty string"
            )
            errors.append({"field": "prompt", "message": message})
            return None
        return messages_of(prompt, system)
    for shorthand in ("prompt", "system"):
        if shorthand in data:
            errors.append(
                {
                    "field": shorthand,
                    "message": "not allowed with 'messages' (send it as a message)",
                }
            )
    value = data["messages"]
    if type(value) is not list or not value:
        errors.append({"field": "messages", "message": "must be a non-empty list of messages"})
        return None
    if len(value) > MAX_MESSAGES:
        errors.append({"field": "messages", "message": f"must hold at most {MAX_MESSAGES}"})
        return None
    before = len(errors)
    messages: list[ChatMessage] = []
    for index, item in enumerate(value):
        field = f"messages[{index}]"
        if type(item) is not dict:
            errors.append({"field": field, "message": "must be an object with role and content"})
            continue
        errors.extend(
            {"field": f"{field}.{key}", "message": "unknown field"}
            for key in item
            if key not in _MESSAGE_FIELDS
        )
        role, content, name = item.get("role"), item.get("content"), item.get("name")
        if role not in ROLES:
            message = "required" if "role" not in item else f"must be one of {_ROLE_LIST}"
            errors.append({"field": f"{field}.role", "message": message})
        if type(content) is not str or not content:
            message = "required" if "content" not in item else "must be a non-empty string"
            errors.append({"field": f"{field}.content", "message": message})
        if name is not None and (type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS):
            errors.append(
                {"field": f"{field}.name", "message": f"must be 1 to {MAX_NAME_CHARS} characters"}
            )
        if len(errors) == before:
            messages.append(
                ChatMessage(role=cast(Role, role), content=cast(str, content), name=name)
            )
    if len(errors) > before:
        return None
    if not any(m.role == "user" for m in messages):
        errors.append({"field": "messages", "message": "must hold at least one user message"})
        return None
    return tuple(messages)


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
    if value is None:
        return None
    if type(value) is not dict:
        errors.append({"field": name, "message": "must be a JSON object"})
        return None
    if _deeper_than(value, MAX_NESTING):
        errors.append(
            {"field": name, "message": f"nests objects and arrays deeper than {MAX_NESTING}"}
        )
        return None
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` deep (itself is level 1)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if type(item) is dict:
            stack.extend((child, depth + 1) for child in item.values() if type(child) in _NESTED)
        elif type(item) is list:
            stack.extend((child, depth + 1) for child in item if type(child) in _NESTED)
    return False
