"""The OpenAPI paths of the console (``console.py``) and the operator endpoints
(``admin.py``), merged into the document by ``openapi.build_document``."""

from __future__ import annotations

from typing import Any, Final

from .problems import PROBLEM_CONTENT_TYPE

__all__ = ["CONSOLE_PROBLEM_TYPES", "TYPE_FORBIDDEN", "TYPE_REPLAY_FAILED", "console_paths"]

#: Problem types of the operator endpoints (the document's ``Problem.type`` lists them).
TYPE_FORBIDDEN: Final = "urn:ai-orchestrator:problem:forbidden"
TYPE_REPLAY_FAILED: Final = "urn:ai-orchestrator:problem:replay-failed"
CONSOLE_PROBLEM_TYPES: Final = (TYPE_FORBIDDEN, TYPE_REPLAY_FAILED)

Schema = dict[str, Any]

_TRACEPARENT: Final = {"traceparent": {"$ref": "#/components/headers/traceparent"}}
_UNAUTHORIZED: Final = {"$ref": "#/components/responses/Unauthorized"}
_INTERNAL: Final = {"$ref": "#/components/responses/InternalError"}
_UNAVAILABLE: Final = {"$ref": "#/components/responses/Unavailable"}


def _problem(description: str) -> Schema:
    return {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        "headers": dict(_TRACEPARENT),
    }


def _json(description: str, schema: Schema) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        "headers": dict(_TRACEPARENT),
    }


def _file(description: str, media: tuple[str, ...]) -> Schema:
    return {
        "description": description,
        "content": {m: {"schema": {"type": "string"}} for m in media},
        "headers": {
            "Content-Security-Policy": {"schema": {"type": "string"}},
            "ETag": {"schema": {"type": "string"}},
        },
    }


def _admin(responses: Schema) -> Schema:
    return {
        **responses,
        "401": _UNAUTHORIZED,
        "403": _problem("The tenant is not one of ADMIN_TENANTS."),
        "500": _INTERNAL,
        "503": _UNAVAILABLE,
    }


_INT: Final = {"type": "integer", "minimum": 0}
_NULLABLE_STRING: Final = {"type": ["string", "null"]}

_QUEUES: Final = {
    "type": "object",
    "required": ["queues", "priorities", "workers"],
    "properties": {
        "queues": {
            "type": "array",
            "description": (
                "One row per queue: the stream (priority null: dispatched and not yet read, "
                "unkeyed and delayed tasks; pending: being worked on), then each priority's "
                "waiting room (never pending). The backlogs add up to the whole backlog."
            ),
            "items": {
                "type": "object",
                "required": ["stream", "group", "priority", "backlog", "pending"],
                "properties": {
                    "stream": {"type": "string"},
                    "group": {"type": "string"},
                    "priority": {"enum": ["high", "normal", "low", None]},
                    "backlog": _INT,
                    "pending": _INT,
                },
            },
        },
        "priorities": {
            "type": "object",
            "description": "Tasks waiting to be dispatched (the waiting room), by priority.",
            "required": ["high", "normal", "low"],
            "properties": {"high": _INT, "normal": _INT, "low": _INT},
        },
        "workers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["consumer", "providers", "default_model", "concurrency"],
                "properties": {
                    "consumer": {"type": "string"},
                    "providers": {"type": "array", "items": {"type": "string"}},
                    "default_model": {"type": "string"},
                    "concurrency": _INT,
                    "started_at": _INT,
                },
            },
        },
    },
}

_DEAD_LETTER: Final = {
    "type": "object",
    "required": ["entry_id", "task_id", "tenant", "reason", "delivery_count", "dead_at"],
    "properties": {
        "entry_id": {"type": "string"},
        "task_id": _NULLABLE_STRING,
        "tenant": _NULLABLE_STRING,
        "reason": {"type": "string"},
        "delivery_count": _INT,
        "dead_at": {"type": "string", "format": "date-time"},
    },
}


def console_paths() -> dict[str, Any]:
    """The paths, in the document's shape."""
    return {
        "/console": {
            "get": {
                "operationId": "console",
                "summary": "The web console's page (no authentication: it signs in itself).",
                "security": [],
                "responses": {"200": _file("The page.", ("text/html",)), "500": _INTERNAL},
            }
        },
        "/console/static/{name}": {
            "get": {
                "operationId": "consoleFile",
                "summary": "A script, style sheet or icon of the console.",
                "security": [],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": _file("The file.", ("text/javascript", "text/css", "image/svg+xml")),
                    "404": _problem("No such file."),
                    "500": _INTERNAL,
                },
            }
        },
        "/v1/console/config": {
            "get": {
                "operationId": "consoleConfig",
                "summary": "What the console shows the key's tenant.",
                "responses": {
                    "200": _json(
                        "The tenant, whether it is an operator, and the trace link template.",
                        {
                            "type": "object",
                            "required": ["tenant", "admin", "trace_url"],
                            "properties": {
                                "tenant": {"type": "string"},
                                "admin": {"type": "boolean"},
                                "trace_url": {
                                    "type": ["string", "null"],
                                    "description": "CONSOLE_TRACE_URL: holds {trace_id}.",
                                },
                            },
                        },
                    ),
                    "401": _UNAUTHORIZED,
                    "500": _INTERNAL,
                },
            }
        },
        "/v1/admin/queues": {
            "get": {
                "operationId": "adminQueues",
                "summary": "The tasks stream's queues by priority; live workers.",
                "responses": _admin({"200": _json("The queue and the workers.", _QUEUES)}),
            }
        },
        "/v1/admin/dead-letters": {
            "get": {
                "operationId": "adminDeadLetters",
                "summary": "The tasks stream's dead letters, oldest first.",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _admin(
                    {
                        "200": _json(
                            "A page of dead letters.",
                            {
                                "type": "object",
                                "required": ["object", "data", "has_more"],
                                "properties": {
                                    "object": {"const": "list"},
                                    "stream": {"type": "string"},
                                    "data": {"type": "array", "items": _DEAD_LETTER},
                                    "first_id": _NULLABLE_STRING,
                                    "last_id": _NULLABLE_STRING,
                                    "has_more": {"type": "boolean"},
                                },
                            },
                        ),
                        "400": _problem("A bad limit."),
                    }
                ),
            }
        },
        "/v1/admin/dead-letters/replay": {
            "post": {
                "operationId": "adminReplayDeadLetters",
                "summary": "Run dead-lettered tasks again under their ids.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "task_ids": {
                                        "type": "array",
                                        "items": {"type": "string", "minLength": 1},
                                    },
                                    "all": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
                "responses": _admin(
                    {
                        "200": _json(
                            "The tasks replayed, with their attempts so far.",
                            {
                                "type": "object",
                                "required": ["replayed"],
                                "properties": {"replayed": {"type": "array"}},
                            },
                        ),
                        "400": _problem("Neither task_ids nor all, or both."),
                        "409": _problem("A named task has no dead letter: nothing replayed."),
                        "415": _problem("Not JSON."),
                    }
                ),
            }
        },
        "/v1/admin/dead-letters/purge": {
            "post": {
                "operationId": "adminPurgeDeadLetters",
                "summary": "Delete the dead letters (those older than older_than_seconds).",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "older_than_seconds": {"type": "number", "minimum": 0}
                                },
                            }
                        }
                    },
                },
                "responses": _admin(
                    {
                        "200": _json(
                            "How many were deleted.",
                            {
                                "type": "object",
                                "required": ["purged"],
                                "properties": {"purged": _INT},
                            },
                        ),
                        "400": _problem("A bad older_than_seconds."),
                        "415": _problem("Not JSON."),
                    }
                ),
            }
        },
    }
