"""A batch's lines: an input line as a chat completion submission, and the output and error
file entries in OpenAI's shape (``id``, ``custom_id``, ``response``, ``error``)."""

from __future__ import annotations

from typing import Any, Final

import attrs
import orjson

from ..chat import _BadRequest as ChatBadRequest  # the reasons chat.py refuses a request
from ..chat import completion, submission_body
from ..model import TaskRecord, TaskStatus
from ..problems import Problem, openai_error_body
from ..validation import Submission, parse_submission
from .model import LineResult, PendingLine

__all__ = [
    "CHAT_ENDPOINT",
    "MAX_CUSTOM_ID",
    "InvalidLine",
    "line_error",
    "parse_line",
    "task_line",
]

#: The one endpoint batches run.
CHAT_ENDPOINT: Final = "/v1/chat/completions"
MAX_CUSTOM_ID: Final = 512
#: A failed task's status code and OpenAI error type in the error file, by its error type
#: (as ``POST /v1/chat/completions`` answers it).
_TASK_ERRORS: Final = {
    "rate_limit": (429, "rate_limit_error"),
    "invalid_request": (400, "invalid_request_error"),
    "content_filter": (400, "invalid_request_error"),
    "invalid_model": (404, "invalid_request_error"),
}


class InvalidLine(Exception):
    """An input line that cannot be a request: its ``custom_id`` (when it has one), an error
    code and a message naming what is wrong."""

    def __init__(self, message: str, code: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.custom_id = custom_id


def parse_line(raw: bytes, *, max_prompt_chars: int) -> tuple[str, Submission]:
    """The ``custom_id`` and submission of an input line; ``InvalidLine`` otherwise. The
    body is checked as ``POST /v1/chat/completions`` checks it (streaming is refused)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidLine(f"The line is not valid JSON: {exc.msg}.", "invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidLine("The line must be a JSON object.", "invalid_request")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        raise InvalidLine(
            f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters.", "missing_custom_id"
        )
    unknown = set(data) - {"custom_id", "method", "url", "body"}
    if unknown:
        raise InvalidLine(f"{sorted(unknown)[0]!r} is not supported.", "invalid_request", custom_id)
    if data.get("method") != "POST":
        raise InvalidLine("method must be POST.", "invalid_method", custom_id)
    if data.get("url") != CHAT_ENDPOINT:
        raise InvalidLine(f"url must be {CHAT_ENDPOINT}.", "invalid_url", custom_id)
    try:
        body, stream, _ = submission_body(data.get("body"))
        if stream:
            raise InvalidLine("A batch line cannot stream.", "invalid_request", custom_id)
        submission = parse_submission(orjson.dumps(body), max_prompt_chars=max_prompt_chars)
    except ChatBadRequest as exc:
        raise InvalidLine(f"body: {exc.message}", "invalid_request", custom_id) from None
    except Problem as problem:
        detail = problem.detail
        if problem.errors:
            first = problem.errors[0]
            detail = f"{str(first['field']).removeprefix('parameters.')}: {first['message']}"
        raise InvalidLine(f"body: {detail}", "invalid_request", custom_id) from None
    return custom_id, submission


def _entry(request_id: str, custom_id: str | None, response: Any, error: Any) -> bytes:
    entry = {"id": f"batch_req_{request_id}", "custom_id": custom_id}
    return orjson.dumps({**entry, "response": response, "error": error})


def line_error(batch_id: str, line: int, error: InvalidLine) -> LineResult:
    """The error file entry of a line that was never a task."""
    return LineResult(
        line=line,
        ok=False,
        text=_entry(
            f"{batch_id.removeprefix('batch_')}_{line}",
            error.custom_id,
            None,
            {"code": error.code, "message": error.message},
        ),
    )


def task_line(pending: PendingLine, record: TaskRecord | None, ended_as: str) -> LineResult:
    """The entry of a line whose task ended (``record``), or is gone or was stopped
    (``ended_as``: the error code, ``batch_cancelled`` or ``batch_expired``)."""
    custom_id, task_id = pending.custom_id, pending.task_id
    if record is None or record.status is TaskStatus.CANCELLED:
        code = ended_as if record is not None else "task_expired"
        message = {
            "batch_cancelled": "The batch was cancelled before this request finished.",
            "batch_expired": "The batch expired before this request finished.",
        }.get(code, "The request's task expired before its result was collected.")
        return LineResult(
            line=pending.line,
            ok=False,
            text=_entry(task_id, custom_id, None, {"code": code, "message": message}),
        )
    if record.status is TaskStatus.SUCCEEDED:
        body = completion(record, pending.model)
        response = {"status_code": 200, "request_id": task_id, "body": body}
        text = _entry(task_id, custom_id, response, None)
        return LineResult(line=pending.line, ok=True, text=text)
    error = record.error
    kind = error.type if error is not None else "internal"
    message = error.message if error is not None else "The task failed."
    status, type_ = _TASK_ERRORS.get(kind, (502, "server_error"))
    response = {
        "status_code": status,
        "request_id": task_id,
        "body": openai_error_body(message, type_, None, kind),
    }
    return LineResult(line=pending.line, ok=False, text=_entry(task_id, custom_id, response, None))


def with_batch_metadata(submission: Submission, batch_id: str, custom_id: str) -> Submission:
    """The submission with its batch and ``custom_id`` in the task's metadata (GET /v1/tasks
    shows which line a task runs)."""
    return attrs.evolve(
        submission, metadata={**submission.metadata, "batch_id": batch_id, "custom_id": custom_id}
    )
