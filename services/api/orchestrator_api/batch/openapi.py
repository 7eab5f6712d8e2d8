"""The Files and Batches operations of the OpenAPI document (``openapi.build_document``
adds them): OpenAI's shapes, errors in OpenAI's ``OpenAIError`` shape."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["add_batch_operations"]

Schema = dict[str, Any]

_ID: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": 64}
_TIME: Final[Schema] = {"type": "integer"}
_OPTIONAL_TIME: Final[Schema] = {"type": ["integer", "null"]}
_METADATA: Final[Schema] = {
    "type": ["object", "null"],
    "maxProperties": 16,
    "propertyNames": {"maxLength": 64},
    "additionalProperties": {"type": "string", "maxLength": 512},
}

SCHEMAS: Final[dict[str, Schema]] = {
    "File": {
        "description": "OpenAI's file object: an uploaded batch input, or a batch's output.",
        "type": "object",
        "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "file"},
            "bytes": {"type": "integer", "minimum": 0},
            "created_at": _TIME,
            "expires_at": _OPTIONAL_TIME,
            "filename": {"type": "string"},
            "purpose": {"enum": ["batch", "batch_output"]},
            "status": {"enum": ["uploaded", "processed", "error"]},
            "status_details": {"type": ["string", "null"]},
        },
    },
    "FileList": {
        "type": "object",
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/File"}},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
        },
    },
    "FileDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "file"},
            "deleted": {"type": "boolean"},
        },
    },
    "FileUpload": {
        "type": "object",
        "required": ["purpose", "file"],
        "additionalProperties": False,
        "properties": {
            "purpose": {"const": "batch"},
            "expires_after[anchor]": {"const": "created_at"},
            "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
            "file": {
                "type": "string",
                "format": "binary",
                "description": "JSONL: one request a line (up to MAX_BATCH_FILE_BYTES).",
            },
        },
    },
    "BatchRequest": {
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "additionalProperties": False,
        "properties": {
            "input_file_id": _ID,
            "endpoint": {"const": "/v1/chat/completions"},
            "completion_window": {"const": "24h"},
            "metadata": _METADATA,
            "output_expires_after": {
                "type": ["object", "null"],
                "required": ["anchor", "seconds"],
                "additionalProperties": False,
                "properties": {
                    "anchor": {"const": "created_at"},
                    "seconds": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                },
            },
        },
    },
    "Batch": {
        "description": (
            "OpenAI's batch object. `request_counts` counts the lines: `completed` answered, "
            "`failed` in the error file (invalid, failed, cancelled or expired)."
        ),
        "type": "object",
        "required": [
            "id",
            "object",
            "endpoint",
            "input_file_id",
            "completion_window",
            "status",
            "created_at",
            "request_counts",
        ],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "batch"},
            "endpoint": {"type": "string"},
            "errors": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {
                            "object": {"const": "list"},
                            "data": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                ]
            },
            "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"},
            "status": {
                "enum": [
                    "validating",
                    "in_progress",
                    "finalizing",
                    "completed",
                    "failed",
                    "expired",
                    "cancelling",
                    "cancelled",
                ]
            },
            "output_file_id": {"type": ["string", "null"]},
            "error_file_id": {"type": ["string", "null"]},
            "created_at": _TIME,
            "in_progress_at": _OPTIONAL_TIME,
            "expires_at": _OPTIONAL_TIME,
            "finalizing_at": _OPTIONAL_TIME,
            "completed_at": _OPTIONAL_TIME,
            "failed_at": _OPTIONAL_TIME,
            "expired_at": _OPTIONAL_TIME,
            "cancelling_at": _OPTIONAL_TIME,
            "cancelled_at": _OPTIONAL_TIME,
            "request_counts": {
                "type": "object",
                "required": ["total", "completed", "failed"],
                "properties": {
                    "total": {"type": "integer", "minimum": 0},
                    "completed": {"type": "integer", "minimum": 0},
                    "failed": {"type": "integer", "minimum": 0},
                },
            },
            "metadata": _METADATA,
        },
    },
    "BatchList": {
        "type": "object",
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Batch"}},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
        },
    },
}


def _ok(description: str, schema: str) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _errors(*statuses: str) -> dict[str, Schema]:
    descriptions = {
        "400": "Invalid request (the parameter is named in `param`).",
        "401": "Missing or unknown API key.",
        "404": "No such file or batch of this tenant (or it expired).",
        "409": "The batch has finished already.",
        "413": "The body or the file is too large.",
        "415": "The body is not of the expected media type.",
        "500": "An unexpected server error.",
        "503": "The batch store is unreachable.",
    }
    return {
        status: {
            "description": descriptions[status],
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}
            },
        }
        for status in (*statuses, "401", "500", "503")
    }


def _path_id(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_AFTER: Final = _query("after", _ID, "The previous page's `last_id`.")

PATHS: Final[dict[str, Schema]] = {
    "/v1/files": {
        "post": {
            "operationId": "createFile",
            "summary": "Upload a JSONL file of batch requests (OpenAI Files API).",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/FileUpload"}}
                },
            },
            "responses": {
                "200": _ok("The stored file.", "File"),
                **_errors("400", "413", "415"),
            },
        },
        "get": {
            "operationId": "listFiles",
            "summary": "Your files, newest first unless `order=asc`.",
            "parameters": [
                _AFTER,
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 10000},
                    "Page size (default 10000).",
                ),
                _query("order", {"enum": ["asc", "desc"]}, "By creation time."),
                _query("purpose", {"enum": ["batch", "batch_output"]}, "Only these files."),
            ],
            "responses": {"200": _ok("A page of files.", "FileList"), **_errors("400")},
        },
    },
    "/v1/files/{file_id}": {
        "get": {
            "operationId": "retrieveFile",
            "summary": "A file's description.",
            "parameters": [_path_id("file_id")],
            "responses": {"200": _ok("The file.", "File"), **_errors("404")},
        },
        "delete": {
            "operationId": "deleteFile",
            "summary": "Delete a file.",
            "parameters": [_path_id("file_id")],
            "responses": {"200": _ok("It is gone.", "FileDeleted"), **_errors("404")},
        },
    },
    "/v1/files/{file_id}/content": {
        "get": {
            "operationId": "downloadFile",
            "summary": "A file's bytes (JSONL).",
            "parameters": [_path_id("file_id")],
            "responses": {
                "200": {
                    "description": "The file, as uploaded or produced.",
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                **_errors("404"),
            },
        }
    },
    "/v1/batches": {
        "post": {
            "operationId": "createBatch",
            "summary": "Run every line of an uploaded file as a task (OpenAI Batch API).",
            "description": (
                "Each line (`custom_id`, `method: POST`, `url: /v1/chat/completions`, `body`) "
                "becomes a task of the tenant, as POST /v1/chat/completions would make it. "
                "Answers go to `output_file_id`; invalid lines and failed tasks to "
                "`error_file_id`: every line appears in exactly one."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}
                },
            },
            "responses": {
                "200": _ok("The new batch (`validating`).", "Batch"),
                **_errors("400", "413", "415"),
            },
        },
        "get": {
            "operationId": "listBatches",
            "summary": "Your batches, newest first.",
            "parameters": [
                _AFTER,
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 100},
                    "Page size (default 20).",
                ),
            ],
            "responses": {"200": _ok("A page of batches.", "BatchList"), **_errors("400")},
        },
    },
    "/v1/batches/{batch_id}": {
        "get": {
            "operationId": "retrieveBatch",
            "summary": "A batch and its progress.",
            "parameters": [_path_id("batch_id")],
            "responses": {"200": _ok("The batch.", "Batch"), **_errors("404")},
        }
    },
    "/v1/batches/{batch_id}/cancel": {
        "post": {
            "operationId": "cancelBatch",
            "summary": "Cancel a batch: its unfinished tasks are cancelled.",
            "parameters": [_path_id("batch_id")],
            "responses": {
                "200": _ok("The batch, `cancelling` (or `cancelled`).", "Batch"),
                **_errors("404", "409"),
            },
        }
    },
}


def add_batch_operations(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the Files and Batches paths and schemas."""
    document["paths"].update(PATHS)
    components = document["components"]
    components["schemas"] = {**components["schemas"], **SCHEMAS}
    return document
