"""The ``ai-orchestrator`` command as users run it: single-process mode without Redis, the
``submit`` client, help, and one-line startup errors."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import aiohttp
import attrs
import pytest

from tests.e2e.support import (
    AI_ORCHESTRATOR,
    ROOT,
    Services,
    clean_env,
    free_port,
    wait_healthy,
)
from tests.support.old_redis import old_redis

pytestmark = pytest.mark.slow


@attrs.frozen
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


async def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None, *, timeout: float = 60.0
) -> Outcome:
    """Run ``ai-orchestrator args`` to completion (killed after ``timeout``: a hang guard)."""
    process = await asyncio.create_subprocess_exec(
        AI_ORCHESTRATOR,
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env() if env is None else env,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise AssertionError(
            f"ai-orchestrator {' '.join(args)} still running after {timeout}s"
        ) from None
    assert process.returncode is not None
    return Outcome(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def dead_redis_uri() -> str:
    """A loopback Redis address nobody listens on (the shared Redis is never named)."""
    return f"redis://127.0.0.1:{free_port()}/0"


# ---- 7. single-process mode ---------------------------------------------------------------


async def test_run_mode_answers_submit_wait_and_stream_without_redis(
    services: Services, session: aiohttp.ClientSession
) -> None:
    port = free_port()
    # No REDIS_URI and no API keys: in-memory broker and store, authentication off, loopback.
    run = services.start("run", ["run", "--port", str(port)], clean_env())
    run.url = f"http://127.0.0.1:{port}"
    await wait_healthy(session, run)
    url = ["--url", run.url]

    waited, streamed = await asyncio.gather(
        run_cli(["submit", "the answer, waited for", "--wait", "--param", "latency_ms=200", *url]),
        run_cli(
            [
                "submit", "the answer, streamed word by word", "--stream",
                "--param", "chunk_delay_ms=40", *url,
            ]
        ),
    )  # fmt: skip

    assert waited.returncode == 0, waited.stderr
    assert waited.stdout == "the answer, waited for\n"
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == "the answer, streamed word by word\n"
    assert "authentication is OFF" in run.log()
    assert "broker and store: in-memory" in run.log()  # the startup line names the backend
    assert run.alive()

    # One /metrics serves both halves of the process: the API's and the worker's series.
    async with session.get(f"{run.url}/metrics") as response:
        assert response.status == 200
        exposition = await response.text()
    assert re.search(
        r'orchestrator_api_tasks_accepted_total\{model="\w+",tenant="default"\}', exposition
    )
    assert (
        'orchestrator_worker_tasks_succeeded_total{model="echo",provider="echo"} 2.0' in exposition
    )


async def test_submit_sends_a_conversation_with_message(
    services: Services, session: aiohttp.ClientSession
) -> None:
    port = free_port()
    run = services.start("run", ["run", "--port", str(port)], clean_env())
    run.url = f"http://127.0.0.1:{port}"
    await wait_healthy(session, run)

    outcome = await run_cli(
        [
            "submit", "--url", run.url, "--wait",
            "--message", "system:answer in one word",
            "--message", "user:first question",
            "--message", "assistant:first answer",
            "--message", "user:the last: question",
        ]
    )  # fmt: skip

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout == "the last: question\n"  # echo answers the last user turn


async def test_a_short_task_s_record_shows_its_real_start(
    services: Services, session: aiohttp.ClientSession
) -> None:
    port = free_port()
    run = services.start("run", ["run", "--port", str(port)], clean_env())
    url = run.url = f"http://127.0.0.1:{port}"
    await wait_healthy(session, run)

    # 300 ms: shorter than the delay of a `started` event, so the terminal event is alone.
    body = {"prompt": "quick", "parameters": {"latency_ms": 300}, "cache": False}
    async with session.post(f"{url}/v1/tasks", json=body) as response:
        task_id = (await response.json())["id"]
    for _ in range(100):
        async with session.get(f"{url}/v1/tasks/{task_id}") as response:
            task = await response.json()
        if task["status"] == "succeeded":
            break
        await asyncio.sleep(0.1)
    assert task["status"] == "succeeded", task
    started = datetime.fromisoformat(task["started_at"])
    finished = datetime.fromisoformat(task["finished_at"])
    assert (finished - started).total_seconds() >= 0.3  # echo slept 300 ms in between


async def test_run_mode_keeps_echo_even_with_echo_enabled_false(
    services: Services, session: aiohttp.ClientSession
) -> None:
    port = free_port()
    run = services.start("run", ["run", "--port", str(port)], clean_env(ECHO_ENABLED="false"))
    run.url = f"http://127.0.0.1:{port}"
    await wait_healthy(session, run)

    outcome = await run_cli(["submit", "still echoed", "--wait", "--url", run.url])

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout == "still echoed\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--message", "robot:hello"], "ROLE:TEXT"),
        (["--message", "no role here"], "ROLE:TEXT"),
        (["a prompt", "--message", "user:hello"], "not both"),
        ([], "PROMPT"),
    ],
)
async def test_a_bad_conversation_on_the_command_line_is_one_line(
    args: list[str], message: str
) -> None:
    outcome = await run_cli(["submit", "--url", f"http://127.0.0.1:{free_port()}", *args])
    assert outcome.returncode == 2
    assert len(outcome.stderr_lines) == 1, outcome.stderr
    assert message in outcome.stderr


async def test_run_refuses_a_non_loopback_host_without_keys() -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface: even if the check were missing, nothing
    # would be exposed (the bind would fail instead, and the message would not match).
    outcome = await run_cli(["run", "--host", "192.0.2.1", "--port", str(free_port())])
    assert outcome.returncode != 0
    assert len(outcome.stderr_lines) == 1, outcome.stderr
    assert "192.0.2.1" in outcome.stderr
    assert "API_KEYS" in outcome.stderr


# ---- 8. the command line ------------------------------------------------------------------


def imported_modules(log: str) -> set[str]:
    """The modules a ``PYTHONPROFILEIMPORTTIME=1`` process reported importing."""
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


async def test_a_running_api_imports_no_worker_module_and_uses_prometheus_client(
    services: Services, session: aiohttp.ClientSession
) -> None:
    env = clean_env(API_KEYS="t:e2e-cli-key", PYTHONPROFILEIMPORTTIME="1")
    api = services.api(env)
    await wait_healthy(session, api)
    # A request through every layer (auth, validation, publish, read back) loads what it uses.
    headers = {"Authorization": "Bearer e2e-cli-key"}
    async with session.post(
        f"{api.url}/v1/tasks", json={"prompt": "hi", "model": "echo"}, headers=headers
    ) as response:
        assert response.status == 202, await response.text()
        task_id = (await response.json())["id"]
    async with session.get(f"{api.url}/v1/tasks/{task_id}", headers=headers) as response:
        assert response.status == 200
    async with session.get(f"{api.url}/metrics") as response:
        assert response.status == 200

    modules = imported_modules(api.log())
    assert "orchestrator_api.service" in modules  # the report is there and read right
    assert "orchestrator_tasks" in modules
    assert "prometheus_client" in modules  # /metrics is prometheus_client's
    assert not {m for m in modules if m.startswith("orchestrator_worker")}


async def test_help_of_every_command_exits_0() -> None:
    commands: list[list[str]] = [[], ["api"], ["worker"], ["run"], ["submit"]]
    outcomes = await asyncio.gather(*(run_cli([*command, "--help"]) for command in commands))
    for command, outcome in zip(commands, outcomes, strict=True):
        assert outcome.returncode == 0, (command, outcome.stderr)
        assert outcome.stdout.startswith("usage: ai-orchestrator"), (command, outcome.stdout)
    assert all(name in outcomes[0].stdout for name in ("api", "worker", "run", "submit"))


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("api", "PORT", "x"),
        ("api", "CACHE_TTL_MINUTES", "-1"),
        ("api", "MAX_BODY_BYTES", "lots"),
        ("worker", "NUMBER_OF_WORKERS", "abc"),
        ("worker", "LEASE_SECONDS", "0"),
        ("worker", "REDIS_URI", "mongodb://127.0.0.1:1"),
    ],
)
async def test_a_malformed_setting_stops_startup_with_one_line_naming_it(
    command: str, variable: str, value: str
) -> None:
    env = clean_env(REDIS_URI=dead_redis_uri(), API_KEYS="t:e2e-cli-key", PORT=str(free_port()))
    env[variable] = value
    outcome = await run_cli([command], env)
    assert outcome.returncode != 0
    assert len(outcome.stderr_lines) == 1, outcome.stderr
    assert variable in outcome.stderr


async def test_a_malformed_setting_in_an_env_file_is_named(tmp_path: Path) -> None:
    env_file = tmp_path / "worker_env"
    env_file.write_text(f"REDIS_URI={dead_redis_uri()}\nNUMBER_OF_WORKERS=abc\n")
    outcome = await run_cli(["worker", "--env-file", str(env_file)])
    assert outcome.returncode != 0
    assert len(outcome.stderr_lines) == 1, outcome.stderr
    assert "NUMBER_OF_WORKERS" in outcome.stderr


@pytest.mark.parametrize("command", ["api", "worker", "run"])
async def test_a_missing_env_file_is_one_line(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "no-such.env"
    outcome = await run_cli([command, "--env-file", str(missing)])
    assert outcome.returncode != 0
    assert len(outcome.stderr_lines) == 1, outcome.stderr
    assert str(missing) in outcome.stderr


async def test_submit_to_a_dead_url_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    outcome = await run_cli(["submit", "hello", "--url", url, "--timeout", "20"])
    assert outcome.returncode != 0
    assert len(outcome.stderr_lines) == 1, outcome.stderr
    assert url in outcome.stderr


@pytest.mark.parametrize("command", ["api", "worker", "run"])
async def test_an_old_redis_stops_startup_with_one_line(command: str) -> None:
    async with old_redis("6.0.16") as url:
        env = clean_env(REDIS_URI=url, API_KEYS="t:e2e-cli-key", PORT=str(free_port()))
        outcome = await run_cli([command], env, timeout=30)
    assert outcome.returncode != 0
    assert len(outcome.stderr_lines) == 1, outcome.stderr
    assert "Redis 6.0.16" in outcome.stderr
    assert "7.0" in outcome.stderr
