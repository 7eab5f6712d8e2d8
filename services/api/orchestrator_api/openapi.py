"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Written by hand next to the handlers it describes; ``tests/api/test_http_openapi.py`` checks
that it lists exactly the app's routes and that real responses validate against it.

While workers are alive, the served document also says which ``model`` names they serve
(``served_model_pattern``: their aliases, and their provider prefixes), because a submit
naming any other model is a 400: the document and the server stay one truth.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Final

import orjson

from orchestrator_tasks import NOT_BLANK_PATTERN, ROLES
from orchestrator_tasks.parameters import (
    ECHO,
    ECHO_FAILURES,
    GEMINI,
    KNOWN_PROVIDERS,
    MAX_ECHO_DELAY_MS,
    MAX_WHOLE_NUMBER,
    OPENAI,
    PARAMETERS,
)

from . import problems
from .batch.openapi import add_batch_operations
from .console_docs import CONSOLE_PROBLEM_TYPES, console_paths
from .listing import DEFAULT_LIMIT, MAX_AFTER_CHARS, MAX_LIMIT
from .validation import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDEMPOTENCY_KEY,
    MAX_MESSAGES,
    MAX_MODEL_CHARS,
    MAX_NAME_CHARS,
    MAX_NESTING,
)

__all__ = ["Served", "build_document", "document_bytes", "served_model_pattern"]

#: What the live workers serve: their provider prefixes and their aliases, each sorted.
Served = tuple[tuple[str, ...], tuple[str, ...]]

Schema = dict[str, Any]

_PROBLEM_TYPES: Final = [
    problems.TYPE_BLANK,
    problems.TYPE_VALIDATION,
    problems.TYPE_MALFORMED_JSON,
    problems.TYPE_TOO_LARGE,
    problems.TYPE_UNAVAILABLE,
    problems.TYPE_UNAUTHORIZED,
    problems.TYPE_NOT_FOUND,
    problems.TYPE_UNSUPPORTED_MEDIA,
    problems.TYPE_KEY_IN_USE,
    problems.TYPE_KEY_REUSED,
    problems.TYPE_RATE_LIMITED,
    problems.TYPE_TASK_FINISHED,
    problems.TYPE_INTERNAL,
    *CONSOLE_PROBLEM_TYPES,
]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def _problem(description: str, *, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {problems.PROBLEM_CONTENT_TYPE: {"schema": _ref("Problem")}},
        "headers": {"traceparent": {"$ref": "#/components/headers/traceparent"}},
    }
    if headers:
        response["headers"].update(headers)
    return response


def _json(description: str, schema: Schema, headers: dict[str, Any] | None = None) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        "headers": {"traceparent": {"$ref": "#/components/headers/traceparent"}, **(headers or {})},
    }


#: The value of each known task parameter, valid for at least one provider (the API checks
#: more per model prefix; ``tests/api`` keeps this table equal to ``PARAMETERS``).
_PARAMETER_VALUES: Final[dict[str, Schema]] = {
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_WHOLE_NUMBER},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_WHOLE_NUMBER},
    "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_WHOLE_NUMBER},
    "stop": {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "array",
                "minItems": 1,
                "maxItems": 5,
                "items": {"type": "string", "minLength": 1},
            },
        ],
        "description": "Up to 4 sequences for openai, 5 for gemini.",
    },
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "seed": {
        "type": "integer",
        "minimum": -MAX_WHOLE_NUMBER,
        "maximum": MAX_WHOLE_NUMBER,
        "description": "Up to 2**53 either way (exact in JSON); 32-bit for gemini.",
    },
    "reasoning_effort": {
        "enum": ["none", "minimal", "low", "medium", "high", "xhigh"],
    },
    "thinking_budget": {
        "type": "integer",
        "minimum": -1,
        "maximum": 2**31 - 1,
        "description": "-1: dynamic, 0: off.",
    },
    "response_format": {
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["type"],
                "properties": {"type": {"enum": ["text", "json_object"]}},
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "json_schema"],
                "properties": {
                    "type": {"const": "json_schema"},
                    "json_schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "schema"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                            "schema": {"type": "object"},
                            "strict": {"type": ["boolean", "null"]},
                            "description": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        ],
        "description": (
            'A JSON answer: `json_object` (any object; echo answers `{"text": ...}`) or '
            "`json_schema` (openai and gemini only). Forwarded as is to openai; gemini gets "
            "responseMimeType and responseSchema."
        ),
    },
    "latency_ms": {
        "type": "number",
        "minimum": 0,
        "maximum": MAX_ECHO_DELAY_MS,
        "description": "Simulated provider latency.",
    },
    "chunk_delay_ms": {
        "type": "number",
        "minimum": 0,
        "maximum": MAX_ECHO_DELAY_MS,
        "description": "Simulated pause between streamed words.",
    },
    "fail": {
        "enum": sorted(ECHO_FAILURES),
        "description": "Make the task fail with this error type.",
    },
}


#: Whitespace as the server strips it (``orchestrator_tasks.text``), as a regex class.
_WHITESPACE: Final = "[" + NOT_BLANK_PATTERN[2:]
#: Where a provider's rules differ from "valid for some provider" (the checks of
#: ``orchestrator_tasks.parameters``): openai takes 4 stop sequences, gemini a 32-bit seed,
#: and echo no JSON schema.
_PROVIDER_VALUES: Final[dict[str, dict[str, Schema]]] = {
    OPENAI: {
        "stop": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 4,
                    "items": {"type": "string", "minLength": 1},
                },
            ]
        }
    },
    GEMINI: {"seed": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}},
    ECHO: {"response_format": {"oneOf": [_PARAMETER_VALUES["response_format"]["oneOf"][0]]}},
}


#: The Chat Completions parameters that are task parameters (``chat._PARAMETERS``).
_CHAT_PARAMETERS: Final = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "reasoning_effort",
)


def _model_of(provider: str) -> Schema:
    """``model`` names a model of ``provider`` (its prefix, as the server reads it)."""
    return {
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "pattern": f"^{_WHITESPACE}*{provider}(/|{_WHITESPACE}*$)"}
        },
    }


def _provider_rules(names: Iterable[str], *, nested: bool) -> list[Schema]:
    """For each provider the server knows, what it accepts of the parameters ``names``:
    ``if`` the model is that provider's, ``then`` its parameters (under ``parameters`` when
    ``nested``; unknown names refused there too, as the server does for a known prefix)."""
    rules = []
    for provider in sorted(KNOWN_PROVIDERS):
        properties: dict[str, Schema] = {}
        for name in names:
            if provider not in PARAMETERS[name].providers:
                properties[name] = {"type": "null"}  # absent, or null (which counts as absent)
            elif name in _PROVIDER_VALUES.get(provider, {}):
                value = _PROVIDER_VALUES[provider][name]
                properties[name] = {"oneOf": [value, {"type": "null"}]}
        if nested:
            then: Schema = {
                "properties": {
                    "parameters": {
                        "oneOf": [
                            {
                                "type": "object",
                                "properties": properties,
                                "propertyNames": {"enum": sorted(PARAMETERS)},
                            },
                            {"type": "null"},
                        ]
                    }
                }
            }
        else:
            then = {"properties": properties}
        rules.append({"if": _model_of(provider), "then": then})
    return rules


def _parameter(name: str) -> Schema:
    """A parameter's schema: its value, or null (absent), and which providers take it."""
    value = dict(_PARAMETER_VALUES[name])
    who = ", ".join(sorted(PARAMETERS[name].providers))
    note = value.pop("description", "")
    schema: Schema = {
        "oneOf": [value, {"type": "null"}],
        "description": f"For {who}. {note}".strip(),
    }
    return schema


_COST: Final[Schema] = {
    "type": ["number", "null"],
    "minimum": 0,
    "description": (
        "What this task's provider calls cost in US dollars (the worker's MODEL_PRICES); null "
        "when the model has no price; 0 for a reused answer (cached or joined)."
    ),
}

_SCHEMAS: Final[dict[str, Schema]] = {
    "ChatMessage": {
        "type": "object",
        "additionalProperties": False,
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": list(ROLES)},
            "content": {"type": "string", "minLength": 1},
            "name": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_NAME_CHARS,
                "description": "Tells participants of one role apart (openai only; others "
                "ignore it).",
            },
        },
    },
    "TaskSubmission": {
        "type": "object",
        "additionalProperties": False,
        "description": (
            "Either `prompt` (with an optional `system`), the shorthand for a system message "
            "and one user message, or `messages`: a conversation, never both. All the "
            "messages' content together is at most MAX_PROMPT_CHARS characters (else 413)."
        ),
        "allOf": _provider_rules(_PARAMETER_VALUES, nested=True),
        "oneOf": [
            {"required": ["prompt"], "not": {"required": ["messages"]}},
            {
                "required": ["messages"],
                "not": {"anyOf": [{"required": ["prompt"]}, {"required": ["system"]}]},
            },
        ],
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 1,
                "pattern": NOT_BLANK_PATTERN,
                "description": "The prompt: one user message (not blank).",
            },
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_MESSAGES,
                "items": _ref("ChatMessage"),
                "contains": {"properties": {"role": {"const": "user"}}},
                "description": (
                    "The conversation, in order: system, user and assistant turns, at least "
                    "one of them a user message. An invalid one is a 400 naming it "
                    "(`messages[3].role`)."
                ),
            },
            "model": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_MODEL_CHARS,
                "pattern": NOT_BLANK_PATTERN,
                "description": "Model to use (provider default when absent), e.g. `echo`.",
            },
            "system": {
                "type": ["string", "null"],
                "description": "System instruction, with `prompt` only.",
            },
            "parameters": {
                "type": ["object", "null"],
                "description": (
                    "Model parameters, one vocabulary for every provider. Checked against "
                    "the model's provider at submit: `echo`, `openai/...` and `gemini/...` "
                    "reject a parameter they do not support, or a value out of range, with "
                    "a 400 naming it (`parameters.<name>`). Other models (or none: the "
                    "worker's default) get only the value checks below; unknown names pass "
                    f"through to the worker. Objects and arrays nest at most {MAX_NESTING} "
                    "deep (else 400)."
                ),
                "properties": {name: _parameter(name) for name in _PARAMETER_VALUES},
                "additionalProperties": True,
            },
            "cache": {
                "type": ["boolean", "null"],
                "default": True,
                "description": (
                    "Use this tenant's prompt cache (default true): the same model (as "
                    "submitted), conversation and parameters within CACHE_TTL_MINUTES of "
                    "an identical task's success get its answer at once, without a provider "
                    "call (the task is `succeeded` and `cached` on submit); while an "
                    "identical task is still in flight the new one joins it (`joined`) "
                    "instead of running twice. Never shared across tenants. `false`: no "
                    "lookup, no joining, and the answer is not cached."
                ),
            },
            "metadata": {
                "type": ["object", "null"],
                "description": "Free-form data kept with the task and returned with it; "
                f"objects and arrays nest at most {MAX_NESTING} deep (else 400).",
                "additionalProperties": True,
            },
            "priority": {
                "enum": ["high", "normal", "low", None],
                "default": "normal",
                "description": (
                    "Order among this tenant's waiting tasks: higher first (tenants share "
                    "the workers fairly whatever their tasks' priorities). A `low` task "
                    "that waited PRIORITY_AGING_SECONDS competes as `normal`."
                ),
            },
        },
    },
    "Task": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "id",
            "status",
            "created_at",
            "started_at",
            "finished_at",
            "attempts",
            "model",
            "metadata",
            "trace_id",
            "result",
            "error",
            "cached",
            "joined",
            "partial_text",
            "priority",
            "queue_wait",
        ],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "priority": {"enum": ["high", "normal", "low"]},
            "queue_wait": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Seconds from submission to the start of the first attempt "
                "(null until then).",
            },
            "status": {"$ref": "#/components/schemas/TaskStatus"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "attempts": {
                "type": "integer",
                "minimum": 0,
                "description": "Deliveries to a worker so far (a retry after a crash adds one).",
            },
            "model": {"type": ["string", "null"]},
            "metadata": {"type": "object"},
            "trace_id": {
                "type": ["string", "null"],
                "pattern": "^[0-9a-f]{32}$",
                "description": "The W3C trace id of the submission: find the task's trace.",
            },
            "result": _nullable(_ref("TaskResult")),
            "error": _nullable(_ref("TaskError")),
            "cached": {
                "type": "boolean",
                "description": (
                    "The answer is an identical earlier task's, not a provider call of this "
                    "task's own: served from the tenant's prompt cache (then `attempts` is 0 "
                    "and the task succeeded on submit), or the result of the task it joined."
                ),
            },
            "joined": {
                "type": "boolean",
                "description": (
                    "This task joined an identical task of the tenant's that was in flight: "
                    "it shows that task's status, attempts, events, result and error (with "
                    "its own id, created_at and metadata), and runs no provider call itself. "
                    "If that task could not be queued after all, this one fails with "
                    "`unavailable` (submit again)."
                ),
            },
            "partial_text": {
                "type": ["string", "null"],
                "description": (
                    "A task cancelled while it ran: the text answered until it was stopped "
                    "(null otherwise)."
                ),
            },
        },
    },
    "TaskStatus": {
        "type": "string",
        "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
    },
    "TaskResult": {
        "type": "object",
        "additionalProperties": False,
        "required": ["text", "usage", "provider", "model", "finish_reason", "cost_usd"],
        "properties": {
            "text": {"type": "string"},
            "usage": _nullable(_ref("Usage")),
            "provider": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "finish_reason": {"type": ["string", "null"]},
            "cost_usd": _COST,
        },
    },
    "Usage": {
        "type": "object",
        "additionalProperties": False,
        "required": ["input_tokens", "output_tokens"],
        "properties": {
            "input_tokens": {"type": "integer", "minimum": 0},
            "output_tokens": {"type": "integer", "minimum": 0},
        },
    },
    "TaskError": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "message"],
        "properties": {
            "type": {
                "type": "string",
                "description": "e.g. timeout, rate_limit, invalid_request, internal",
            },
            "message": {"type": "string"},
        },
    },
    "TaskEvent": {
        "description": (
            "One event of a task: a WebSocket text frame, or the id/event/data fields of an "
            "SSE message. `id` is opaque; resume after it with Last-Event-ID."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "event": {
                "type": "string",
                "enum": ["status", "delta", "result", "error", "cancelled"],
            },
            "data": {"type": "object"},
        },
        "oneOf": [
            {
                "properties": {
                    "event": {"const": "status"},
                    "data": _ref("StatusEventData"),
                }
            },
            {"properties": {"event": {"const": "delta"}, "data": _ref("DeltaEventData")}},
            {"properties": {"event": {"const": "result"}, "data": _ref("ResultEventData")}},
            {"properties": {"event": {"const": "error"}, "data": _ref("ErrorEventData")}},
            {
                "properties": {
                    "event": {"const": "cancelled"},
                    "data": _ref("CancelledEventData"),
                }
            },
        ],
    },
    "ChatCompletionRequest": {
        "description": (
            "OpenAI's Chat Completions request, as far as tasks can serve it: the "
            "conversation, the model, and the parameters of the task vocabulary. Any other "
            "field is a 400 naming it."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "messages"],
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_MODEL_CHARS,
                "pattern": NOT_BLANK_PATTERN,
            },
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_MESSAGES,
                "items": _ref("ChatCompletionMessage"),
                "contains": {"properties": {"role": {"const": "user"}}},
            },
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {"include_usage": {"type": ["boolean", "null"]}},
            },
            "n": {"enum": [1, None]},
            "service_tier": {
                "enum": ["auto", "default", "priority", "flex", None],
                "description": "`priority` runs the task as `high`, `flex` as `low` "
                "(`priority` wins when both are given).",
            },
            "priority": {"enum": ["high", "normal", "low", None]},
            "user": {"type": ["string", "null"], "description": "Kept in the task's metadata."},
            "metadata": {"type": ["object", "null"]},
            **{
                name: {"oneOf": [_PARAMETER_VALUES[name], {"type": "null"}]}
                for name in _CHAT_PARAMETERS
            },
        },
        "dependentSchemas": {
            "stream_options": {"required": ["stream"], "properties": {"stream": {"const": True}}}
        },
        "allOf": _provider_rules(_CHAT_PARAMETERS, nested=False),
    },
    "ChatCompletionMessage": {
        "type": "object",
        "additionalProperties": False,
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant"]},
            "content": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "text"],
                            "properties": {
                                "type": {"const": "text"},
                                "text": {"type": "string", "minLength": 1},
                            },
                        },
                    },
                ]
            },
            "name": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_NAME_CHARS},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"const": 0},
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": {"type": "string"},
                            },
                        },
                        "finish_reason": {"enum": ["stop", "length", "content_filter"]},
                    },
                },
            },
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                "properties": {
                    "prompt_tokens": {"type": "integer", "minimum": 0},
                    "completion_tokens": {"type": "integer", "minimum": 0},
                    "total_tokens": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "ChatCompletionChunkMessage": {
        "description": (
            "One Server-Sent Events message of a streamed completion: `data` is a "
            "`chat.completion.chunk` as JSON, an OpenAI error object, or `[DONE]` last."
        ),
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string", "minLength": 1}},
    },
    "OpenAIError": {
        "description": "OpenAI's error shape, so its SDKs raise their own exception classes.",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "TaskEventMessage": {
        "description": (
            "One Server-Sent Events message of a task, by its fields: `id`, `event`, and "
            "`data`, one line of JSON (the `data` of `TaskEvent` for that event). The stream "
            "also starts with a `retry` field of its own."
        ),
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "event": {"enum": ["status", "delta", "result", "error", "cancelled"]},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "retry": {"type": "integer", "minimum": 0},
        },
    },
    "StatusEventData": {
        "type": "object",
        "required": ["status", "attempt"],
        "properties": {
            "status": {"$ref": "#/components/schemas/TaskStatus"},
            "attempt": {
                "type": "integer",
                "minimum": 0,
                "description": "0 while queued; an attempt > 1 voids the earlier deltas.",
            },
        },
    },
    "DeltaEventData": {
        "type": "object",
        "required": ["text", "attempt"],
        "properties": {"text": {"type": "string"}, "attempt": {"type": "integer", "minimum": 1}},
    },
    "ResultEventData": {
        "type": "object",
        "required": ["text", "attempt"],
        "properties": {
            "text": {"type": "string"},
            "usage": _nullable(_ref("Usage")),
            "provider": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "finish_reason": {"type": ["string", "null"]},
            "cost_usd": _COST,
            "attempt": {
                "type": "integer",
                "minimum": 0,
                "description": "0 for an answer served from the prompt cache.",
            },
        },
    },
    "CancelledEventData": {
        "type": "object",
        "required": ["partial_text", "attempt"],
        "properties": {
            "partial_text": {
                "type": "string",
                "description": "The text answered until the task was stopped ('' if none).",
            },
            "attempt": {"type": "integer", "minimum": 0},
        },
    },
    "ErrorEventData": {
        "type": "object",
        "required": ["type", "message", "attempt"],
        "properties": {
            "type": {"type": "string"},
            "message": {"type": "string"},
            "attempt": {"type": "integer", "minimum": 0},
        },
    },
    "Problem": {
        "description": "RFC 9457 problem details.",
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "enum": _PROBLEM_TYPES},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "description": "The request path."},
            "errors": {
                "type": "array",
                "description": "For validation errors: what is wrong with which field.",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["field", "message"],
                    "properties": {
                        "field": {
                            "type": "string",
                            "description": 'Dotted path ("prompt", "parameters.latency_ms"); '
                            '"" for the body itself.',
                        },
                        "message": {"type": "string"},
                    },
                },
            },
        },
    },
    "Model": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {
                "type": "string",
                "minLength": 1,
                "description": "What to give as a task's `model`: `provider/name`, `echo`, or an "
                "alias (MODEL_ALIASES).",
            },
            "object": {"const": "model"},
            "created": {
                "type": "integer",
                "description": "Unix time the earliest live worker offering it started.",
            },
            "owned_by": {
                "type": "string",
                "description": "The provider prefix; `ai-orchestrator` for an alias.",
            },
        },
    },
    "TaskList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "maxItems": MAX_LIMIT,
                "items": _ref("Task"),
                "description": "Newest first (by creation; a replayed task by its replay).",
            },
            "first_id": {
                "type": ["string", "null"],
                "description": "The id of the first task of `data`; null when it is empty.",
            },
            "last_id": {
                "type": ["string", "null"],
                "description": (
                    "The id of the last task of `data` (null when it is empty): pass it as "
                    "`after` for the next page."
                ),
            },
            "has_more": {"type": "boolean", "description": "More tasks follow `last_id`."},
        },
    },
    "ModelList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
    "Health": {
        "type": "object",
        "additionalProperties": False,
        "required": ["status", "checks", "service", "workers"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "workers": {
                "type": "integer",
                "minimum": 0,
                "description": "Workers alive (advertising within their PRESENCE_TTL_SECONDS). "
                "Informational: with none, tasks are still accepted and wait in the queue.",
            },
            "checks": {
                "type": "object",
                "additionalProperties": False,
                "required": ["broker", "store"],
                "properties": {
                    "broker": {"type": "string", "enum": ["ok", "unavailable"]},
                    "store": {"type": "string", "enum": ["ok", "unavailable"]},
                },
            },
            "service": {"type": "string"},
        },
    },
}

_RETRY_AFTER: Final = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_LOCATION: Final = {
    "Location": {
        "description": "The task's URL.",
        "schema": {"type": "string", "format": "uri-reference"},
    }
}

_RESPONSES: Final[dict[str, Schema]] = {
    "Unauthorized": _problem(
        "Missing or unknown API key.",
        headers={
            "WWW-Authenticate": {
                "description": 'Always a Bearer challenge (realm="ai-orchestrator").',
                "schema": {"type": "string"},
            }
        },
    ),
    "NotFound": _problem("No such task for this tenant (unknown, expired, or another's)."),
    "Unavailable": _problem(
        "The broker or the task store is unreachable; nothing was accepted.", headers=_RETRY_AFTER
    ),
    "InternalError": _problem("An unexpected server error (details are in the server log)."),
}

_TASK_ID: Final = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
_LIST_QUERY: Final = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"How many tasks, at most (default {DEFAULT_LIMIT}).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": (
            "A cursor: the `last_id` of the previous page. It must be one of your tasks still "
            "listed (within its TTL), else 400."
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_AFTER_CHARS},
    },
    {
        "name": "status",
        "in": "query",
        "required": False,
        "description": "Only the tasks with this status (as GET /v1/tasks/{task_id} shows it).",
        "schema": _ref("TaskStatus"),
    },
]
_RESUME: Final = [
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Resume after this event id (sent by EventSource on reconnect).",
        "schema": {"type": "string"},
    },
    {
        "name": "last_event_id",
        "in": "query",
        "required": False,
        "description": "Same as the Last-Event-ID header, for clients that cannot set headers.",
        "schema": {"type": "string"},
    },
]

#: What makes a GET a WebSocket opening handshake (RFC 6455 section 4.1); without them the
#: request is a 400, so they are required, and schema-valid requests are upgrades.
_WEBSOCKET_UPGRADE: Final[list[dict[str, Any]]] = [
    {"name": "Upgrade", "in": "header", "required": True, "schema": {"enum": ["websocket"]}},
    {"name": "Connection", "in": "header", "required": True, "schema": {"enum": ["Upgrade"]}},
    {
        "name": "Sec-WebSocket-Version",
        "in": "header",
        "required": True,
        "schema": {"enum": ["13"]},
    },
    {
        "name": "Sec-WebSocket-Key",
        "in": "header",
        "required": True,
        "description": "16 random bytes, base64.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$"},
    },
]


_IDEMPOTENCY_KEY: Final = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes retries safe: one task per key and tenant (for as long as the task "
    "is kept).",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY,
        "pattern": IDEMPOTENCY_KEY_PATTERN,
    },
}
#: The task behind a chat completion.
_TASK_ID_HEADER: Final = {
    "X-Task-Id": {"description": "The task's id.", "schema": {"type": "string"}}
}


def _openai_error(description: str, *, task: bool = True) -> Schema:
    return {
        "description": description,
        "headers": {**(_TASK_ID_HEADER if task else {}), **_RETRY_AFTER},
        "content": {"application/json": {"schema": _ref("OpenAIError")}},
    }


#: The errors every ``/v1/models`` operation may answer, in OpenAI's shape.
_MODELS_ERRORS: Final = {
    "401": _openai_error("Missing or unknown API key.", task=False),
    "500": _openai_error("An unexpected server error.", task=False),
}


def _common(*names: str) -> dict[str, Any]:
    statuses = {"Unauthorized": "401", "NotFound": "404", "Unavailable": "503"}
    out = {statuses[name]: {"$ref": f"#/components/responses/{name}"} for name in names}
    out["500"] = {"$ref": "#/components/responses/InternalError"}
    return out


def build_document() -> dict[str, Any]:
    """The OpenAPI document as a dict (with the Files and Batches operations)."""
    return add_batch_operations(_core_document())


def _core_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ai-orchestrator API",
            "version": "1",
            "description": (
                "Run AI prompts as asynchronous tasks: submit a prompt (202 + task id), then "
                "poll the task, or follow its events over Server-Sent Events or a WebSocket. "
                "Errors are RFC 9457 problem details. Responses carry the W3C `traceparent` "
                "of the request's server span."
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearerAuth": []}],
        "paths": {
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and dependencies (no authentication).",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The broker and the store answer.",
                            "content": {"application/json": {"schema": _ref("Health")}},
                        },
                        "503": {
                            "description": "A dependency does not answer; `checks` names it.",
                            "headers": _RETRY_AFTER,
                            "content": {"application/json": {"schema": _ref("Health")}},
                        },
                        "500": {"$ref": "#/components/responses/InternalError"},
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document (no authentication).",
                    "security": [],
                    "responses": {
                        "200": _json("The OpenAPI 3.1 document.", {"type": "object"}),
                        "500": {"$ref": "#/components/responses/InternalError"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (no authentication).",
                    "description": (
                        "OpenMetrics 1.0 (with trace-id exemplars) when `Accept` asks for "
                        "`application/openmetrics-text`, else the Prometheus 0.0.4 text format. "
                        "See doc/operations.md for what each metric means."
                    ),
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The metrics.",
                            "content": {
                                "text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}},
                            },
                        },
                        "500": {"$ref": "#/components/responses/InternalError"},
                    },
                }
            },
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "summary": "OpenAI Chat Completions, answered by a task.",
                    "description": (
                        "The request becomes a task of the caller's tenant (queued, retried, "
                        "cached, joined, traced); the answer follows it. With `stream`, "
                        "`chat.completion.chunk` events then `data: [DONE]`. `X-Task-Id` "
                        "names the task (GET /v1/tasks/{task_id}). Errors are OpenAI's "
                        "shape."
                    ),
                    "parameters": [_IDEMPOTENCY_KEY],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
                    },
                    "responses": {
                        "200": {
                            "description": "The completion, or its stream.",
                            "headers": {**_TASK_ID_HEADER},
                            "content": {
                                "application/json": {"schema": _ref("ChatCompletion")},
                                "text/event-stream": {"schema": _ref("ChatCompletionChunkMessage")},
                            },
                        },
                        **{
                            status: _openai_error(description)
                            for status, description in (
                                (
                                    "400",
                                    "Invalid request (a model no live worker serves too), or "
                                    "the provider refused it.",
                                ),
                                ("401", "Missing or unknown API key."),
                                ("404", "The model is not served (the task failed)."),
                                ("409", "The Idempotency-Key is in use by another request."),
                                ("413", "The body or the conversation is too large."),
                                ("415", "The body is not JSON."),
                                ("422", "The Idempotency-Key was used with another body."),
                                ("429", "Over the tenant's rate, or the provider's."),
                                ("500", "An unexpected server error."),
                                ("502", "The provider failed the task."),
                                ("503", "The broker or the store is unreachable."),
                            )
                        },
                    },
                }
            },
            "/v1/tasks": {
                "get": {
                    "operationId": "listTasks",
                    "summary": "Your tasks within their TTL, newest first (OpenAI's list shape).",
                    "description": (
                        "Every task of the caller's tenant that has not expired yet "
                        "(CACHE_TTL_MINUTES after it ended; a day while it has not), newest "
                        "first, each as GET /v1/tasks/{task_id} shows it. Page with `after` "
                        "(the previous page's `last_id`) while `has_more`; filter with "
                        "`status`. Another tenant's tasks are never listed."
                    ),
                    "parameters": _LIST_QUERY,
                    "responses": {
                        "200": _json("A page of tasks.", _ref("TaskList")),
                        "400": _problem(
                            "A query parameter is invalid or given twice, or `after` is not one "
                            "of your listed tasks (`errors` names the parameter)."
                        ),
                        **_common("Unauthorized", "Unavailable"),
                    },
                },
                "post": {
                    "operationId": "submitTask",
                    "summary": "Submit a prompt as a task.",
                    "description": (
                        "202 when the task is durably queued; also 202, with nothing queued, "
                        "when the prompt cache answered it (`succeeded`, `cached`) or it "
                        "joined an identical task in flight (`joined`; see `cache`). With an "
                        "`Idempotency-Key` this tenant used before, nothing new is queued and "
                        "the earlier task is returned with 200; with another body, that is a "
                        "422."
                    ),
                    "parameters": [_IDEMPOTENCY_KEY],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("TaskSubmission")}},
                    },
                    "responses": {
                        "202": _json(
                            "Queued (or answered from the cache, or joined).",
                            _ref("Task"),
                            _LOCATION,
                        ),
                        "200": _json(
                            "The task this Idempotency-Key created before.", _ref("Task"), _LOCATION
                        ),
                        "400": _problem(
                            "Malformed JSON, or invalid fields (listed in `errors`), or an "
                            "invalid Idempotency-Key. Also, while any worker is alive, a "
                            "`model` no live worker serves (neither its provider prefix nor an "
                            "alias; `errors` names `model`, see GET /v1/models; this document, "
                            "as served, gives their pattern); with none alive the task is "
                            "accepted and waits in the queue."
                        ),
                        "413": _problem(
                            "The body (MAX_BODY_BYTES) or the conversation's text "
                            "(MAX_PROMPT_CHARS) is too large."
                        ),
                        "409": _problem(
                            "Another request with this Idempotency-Key is still being "
                            "processed (its task is not queued yet). Retry after `Retry-After`: "
                            "you then get its task (200), or a new one (202) if it failed.",
                            headers=_RETRY_AFTER,
                        ),
                        "422": _problem(
                            "This Idempotency-Key was used before with another request body "
                            "(compared as parsed: key order and whitespace do not matter)."
                        ),
                        "429": _problem(
                            "The tenant is over its submission rate (`RATE_LIMITS`); nothing "
                            "was stored. Retry after `Retry-After`.",
                            headers=_RETRY_AFTER,
                        ),
                        "415": _problem(
                            "The body is not JSON.",
                            headers={
                                "Accept-Post": {
                                    "description": "The accepted media type.",
                                    "schema": {"type": "string"},
                                }
                            },
                        ),
                        **_common("Unauthorized", "Unavailable"),
                    },
                },
            },
            "/v1/tasks/{task_id}": {
                "get": {
                    "operationId": "getTask",
                    "summary": "A task's status, and its result or error once finished.",
                    "parameters": [_TASK_ID],
                    "responses": {
                        "200": _json("The task.", _ref("Task")),
                        **_common("Unauthorized", "NotFound", "Unavailable"),
                    },
                }
            },
            "/v1/tasks/{task_id}/cancel": {
                "post": {
                    "operationId": "cancelTask",
                    "summary": "Cancel a task: it never starts, or its model call is stopped.",
                    "description": (
                        "202 with the task. A queued task is `cancelled` at once and never "
                        "calls a model. A running task stays `running` until its worker has "
                        "stopped the call (within about a second; the provider's stream is "
                        "closed), then ends `cancelled` with the text so far as "
                        "`partial_text`. A task that joined another, or that others joined, "
                        "ends `cancelled` alone: the run goes on for the others. Repeating a "
                        "cancel is harmless; a finished task is a 409."
                    ),
                    "parameters": [_TASK_ID],
                    "responses": {
                        "202": _json("Cancelled, or being stopped.", _ref("Task")),
                        "409": _problem("The task has succeeded or failed already."),
                        **_common("Unauthorized", "NotFound", "Unavailable"),
                    },
                }
            },
            "/v1/tasks/{task_id}/events": {
                "get": {
                    "operationId": "taskEvents",
                    "summary": "The task's events as Server-Sent Events.",
                    "description": (
                        "Messages `status`, `delta`, `result`, `error`, `cancelled` (schema "
                        "`TaskEvent`: SSE `id`, `event`, and `data` as one line of JSON), from "
                        "the start or after Last-Event-ID, then live. Ends after `result`, "
                        "`error` or `cancelled`. "
                        "A `: keepalive` comment comes every 15 s while idle."
                    ),
                    "parameters": [_TASK_ID, *_RESUME],
                    "responses": {
                        "200": {
                            "description": "The event stream.",
                            "headers": {
                                "traceparent": {"$ref": "#/components/headers/traceparent"}
                            },
                            "content": {
                                # OpenAPI 3.1 has no itemSchema (3.2 does): the schema of
                                # an event stream is the schema of one event, as parsed
                                # from its fields (what schemathesis checks each event by).
                                "text/event-stream": {"schema": _ref("TaskEventMessage")}
                            },
                        },
                        **_common("Unauthorized", "NotFound", "Unavailable"),
                    },
                }
            },
            "/v1/tasks/{task_id}/ws": {
                "get": {
                    "operationId": "taskWebSocket",
                    "summary": "The task's events over a WebSocket.",
                    "description": (
                        "After the upgrade, the server sends each event as a JSON text frame "
                        "(schema `TaskEvent`) and closes (1000) after `result` or `error`; "
                        "1001 when the server shuts down (reconnect with last_event_id)."
                    ),
                    "parameters": [_TASK_ID, *_RESUME, *_WEBSOCKET_UPGRADE],
                    "responses": {
                        "101": {"description": "Switching to the WebSocket protocol."},
                        "400": _problem("Not a WebSocket upgrade request."),
                        **_common("Unauthorized", "NotFound", "Unavailable"),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The models the live workers serve (OpenAI's list shape).",
                    "description": (
                        "The union of what live workers advertise: their aliases and the "
                        "aliases' targets, their default models, and `echo`. A provider "
                        "prefix (`openai/...`, `gemini/...`) takes any of that provider's "
                        "model names, which are accepted but not listed. Empty while no "
                        "worker is alive."
                    ),
                    "responses": {
                        "200": _json("The models.", _ref("ModelList")),
                        **_MODELS_ERRORS,
                    },
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "getModel",
                    "summary": "One model, when a live worker serves it.",
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "description": "A model id; `/` inside it may be sent as is.",
                            "schema": {"type": "string", "minLength": 1},
                        }
                    ],
                    "responses": {
                        "200": _json("The model.", _ref("Model")),
                        "404": _openai_error("No live worker serves this model.", task=False),
                        **_MODELS_ERRORS,
                    },
                }
            },
            **console_paths(),
        },
        "components": {
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "headers": {
                "traceparent": {
                    "description": "W3C trace context of the request's server span.",
                    "schema": {
                        "type": "string",
                        "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                    },
                }
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from API_KEYS; it selects the tenant.",
                }
            },
        },
    }


@functools.lru_cache(maxsize=16)
def document_bytes(served: Served | None = None) -> bytes:
    """The document, serialized once per set of ``served`` models (None: no worker alive,
    so any model is taken and waits for one)."""
    document = build_document()
    if served is not None:
        document = _with_served_models(document, *served)
    return orjson.dumps(document)


def served_model_pattern(providers: Iterable[str], aliases: Iterable[str]) -> str:
    """A pattern (Python and ECMAScript) matching exactly the model names that
    ``WorkerAdvert.serves`` accepts for these providers and aliases: whitespace around the
    name, then an alias, or a provider prefix alone or followed by ``/`` and anything."""
    prefixes = "|".join(_literal(name) for name in providers)
    names = "|".join(_literal(name) for name in aliases)
    choices = [f"(?:{prefixes})(?:/[\\s\\S]*)?"] if prefixes else []
    if names:
        choices.append(f"(?:{names})")
    if not choices:
        return "^(?!)"  # nothing is served
    return f"^{_WHITESPACE}*(?:{'|'.join(choices)}){_WHITESPACE}*$"


def _literal(name: str) -> str:
    """``name`` as a regular expression matching itself, in Python and ECMAScript alike
    (``re.escape`` escapes characters, such as ``-``, that ECMAScript's ``u`` mode refuses
    to see escaped)."""
    return "".join(f"\\{c}" if c in _REGEX_SPECIALS else c for c in name)


_REGEX_SPECIALS: Final = frozenset("\\^$.|?*+()[]{}/")


def _with_served_models(
    document: Schema, providers: tuple[str, ...], aliases: tuple[str, ...]
) -> Schema:
    """``document`` whose submissions' ``model`` must be one the workers serve (copies of
    the schemas it changes: the module's own stay as they are)."""
    pattern = served_model_pattern(providers, aliases)
    served = ", ".join(providers) + (f"; aliases {', '.join(aliases)}" if aliases else "")
    schemas = dict(document["components"]["schemas"])
    for name in ("TaskSubmission", "ChatCompletionRequest"):
        schema = dict(schemas[name])
        properties = dict(schema["properties"])
        model = dict(properties["model"])
        model["pattern"] = pattern  # it implies the not-blank pattern it replaces
        model["description"] = (
            f"{model.get('description', 'Model to use.')} The live workers serve: {served} "
            "(another model is a 400; see GET /v1/models)."
        )
        properties["model"] = model
        schema["properties"] = properties
        schemas[name] = schema
    components = {**document["components"], "schemas": schemas}
    return {**document, "components": components}
