"""``ai-orchestrator batch submit FILE.jsonl --wait --output FILE`` against single-process
mode (in-memory broker and stores, the echo provider)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from orchestrator_cli.batch import progress_bar
from tests.e2e.support import Services, clean_env, free_port, wait_healthy
from tests.e2e.test_cli import run_cli

pytestmark = pytest.mark.slow


def _line(custom_id: str, prompt: str) -> str:
    body = {"model": "echo", "messages": [{"role": "user", "content": prompt}]}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


async def test_batch_submit_waits_and_writes_the_output_and_error_files(
    services: Services, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    run = services.start("run", ["run", "--port", str(port)], clean_env())
    run.url = f"http://127.0.0.1:{port}"
    await wait_healthy(session, run)
    source = tmp_path / "in.jsonl"
    source.write_text(f"{_line('a', 'first answer')}\n{{oops\n{_line('b', 'second answer')}\n")
    output, errors = tmp_path / "out.jsonl", tmp_path / "err.jsonl"

    outcome = await run_cli(
        [
            "batch", "submit", str(source), "--wait", "--url", run.url,
            "--output", str(output), "--errors", str(errors),
        ]
    )  # fmt: skip

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.startswith("batch_")
    assert "3/3 done (1 failed) completed" in outcome.stderr  # not a terminal: the last line
    answers = {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"]
        for line in map(json.loads, output.read_text().splitlines())
    }
    assert answers == {"a": "first answer", "b": "second answer"}
    (error,) = map(json.loads, errors.read_text().splitlines())
    assert error["error"]["code"] == "invalid_json"


async def test_batch_submit_of_a_missing_file_is_a_usage_error() -> None:
    outcome = await run_cli(["batch", "submit", "/nonexistent/in.jsonl"])

    assert outcome.returncode == 2
    assert "no such file" in outcome.stderr


def test_the_progress_bar_fills_with_the_lines_done() -> None:
    batch = {"status": "in_progress", "request_counts": {"total": 4, "completed": 1, "failed": 1}}

    assert progress_bar(batch) == f"[{'#' * 15}{'.' * 15}] 2/4 done (1 failed) in_progress"
