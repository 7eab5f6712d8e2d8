"""The official ``openai`` SDK's Files and Batches calls, unchanged, against real ``api`` and
``worker`` processes on a throwaway redis-server (the stack of test_openai_sdk.py): upload a
JSONL file, run it as a batch, follow it, read the output and error files, cancel one."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai
import pytest

from tests.e2e.test_openai_sdk import Stack, client, stack  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.slow


def _line(custom_id: str, content: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": content}]},
    }


def _jsonl(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def _until_done(sdk: openai.OpenAI, batch_id: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)


def test_a_batch_runs_through_the_sdk_and_its_files_come_back(
    stack: Stack,  # noqa: F811
    client: openai.OpenAI,  # noqa: F811
) -> None:
    data = _jsonl(_line("q1", "alpha beta"), b"not json", _line("q2", "gamma"))

    uploaded = client.files.create(file=("questions.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "sdk-test"},
    )
    done = _until_done(client, batch.id)

    assert uploaded.bytes == len(data)
    assert client.files.retrieve(uploaded.id).filename == "questions.jsonl"
    assert client.files.content(uploaded.id).content == data
    assert done.status == "completed"
    assert done.metadata == {"job": "sdk-test"}
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (3, 2)
    assert done.request_counts.failed == 1
    assert done.output_file_id is not None
    assert done.error_file_id is not None
    outputs = [
        json.loads(raw) for raw in client.files.content(done.output_file_id).text.splitlines()
    ]
    assert sorted(o["custom_id"] for o in outputs) == ["q1", "q2"]
    for output in outputs:
        assert output["response"]["status_code"] == 200
        assert output["response"]["body"]["object"] == "chat.completion"
        assert output["response"]["body"]["choices"][0]["message"]["content"]
    (error,) = [
        json.loads(raw) for raw in client.files.content(done.error_file_id).text.splitlines()
    ]
    assert error["error"]["code"] == "invalid_json"
    assert batch.id in [b.id for b in client.batches.list(limit=100)]
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
    client.files.delete(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_a_cancelled_batch_ends_cancelled_through_the_sdk(
    stack: Stack,  # noqa: F811
    client: openai.OpenAI,  # noqa: F811
) -> None:
    uploaded = client.files.create(
        file=("one.jsonl", io.BytesIO(_jsonl(_line("only", "hello")))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    cancelled = client.batches.cancel(batch.id)
    done = _until_done(client, batch.id)

    assert cancelled.status in ("validating", "cancelling", "cancelled")
    assert done.status == "cancelled"
    assert done.request_counts is not None
    assert done.request_counts.total == 1
    assert done.request_counts.completed + done.request_counts.failed == 1


def test_the_sdk_raises_its_own_errors_for_a_bad_batch(
    stack: Stack,  # noqa: F811
    client: openai.OpenAI,  # noqa: F811
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert raised.value.param == "input_file_id"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")


def test_a_duplicate_custom_id_fails_the_batch_with_its_line_through_the_sdk(
    client: openai.OpenAI,  # noqa: F811
) -> None:
    data = _jsonl(_line("q1", "alpha"), _line("q2", "beta"), _line("q1", "gamma"))
    uploaded = client.files.create(file=("dup.jsonl", io.BytesIO(data)), purpose="batch")

    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = _until_done(client, batch.id)

    assert done.status == "failed"
    assert done.errors is not None
    assert done.errors.data is not None
    [error] = done.errors.data
    assert (error.code, error.line, error.param) == ("duplicate_custom_id", 3, "custom_id")
    assert done.output_file_id is None
