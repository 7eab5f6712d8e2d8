"""deployment/local/stack.py: the compose topology as local processes, for people without Docker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.deployment.support import LOCAL_STACK, ROOT, bin_path, load_module
from tests.support.redis_server import free_port

stack_module = load_module(LOCAL_STACK, "deployment_local_stack")

API_KEY = "local-stack-test-key-0123456789"


def run_stack(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCAL_STACK), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def env_files(tmp_path: Path) -> tuple[Path, Path]:
    """The committed examples with a test key (compose hostnames left in, as users have them)."""
    api = tmp_path / "api_env"
    text = (ROOT / ".api_env.example").read_text(encoding="utf-8")
    api.write_text(
        "\n".join(
            f"API_KEYS=test:{API_KEY}" if line.startswith("API_KEYS=") else line
            for line in text.splitlines()
        ),
        encoding="utf-8",
    )
    return api, ROOT / ".worker_env.example"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose stack is always brought down at teardown."""
    directory = tmp_path / "state"
    yield directory
    if (directory / "stack.json").exists():
        run_stack("down", "--state-dir", str(directory), "--timeout", "20")


def up(state_dir: Path, env_files: tuple[Path, Path], *extra: str) -> dict[str, Any]:
    result = run_stack(
        "up",
        "--state-dir",
        str(state_dir),
        "--api-port",
        "0",
        "--api-env",
        str(env_files[0]),
        "--worker-env",
        str(env_files[1]),
        "--json",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    state: dict[str, Any] = json.loads(result.stdout)
    return state


def pids(state: dict[str, Any]) -> dict[str, int]:
    return {name: entry["pid"] for name, entry in state["processes"].items()}


def alive(pid: int) -> bool:
    return bool(stack_module.is_running(pid))


@pytest.mark.slow
def test_up_serves_tasks_and_down_stops_exactly_its_processes(
    state_dir: Path, env_files: tuple[Path, Path]
) -> None:
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        state = up(state_dir, env_files, "--workers", "2")
        started = pids(state)
        assert set(started) == {"redis", "api", "worker-1", "worker-2"}
        assert all(alive(pid) for pid in started.values())
        with urllib.request.urlopen(f"{state['api_url']}/health", timeout=10) as response:
            assert response.status == 200

        answer = subprocess.run(
            [
                bin_path("ai-orchestrator") or "ai-orchestrator",
                "submit",
                "hello local stack",
                "--wait",
                "--timeout",
                "60",
                "--url",
                state["api_url"],
                "--api-key",
                API_KEY,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert answer.returncode == 0, answer.stderr
        assert "hello local stack" in answer.stdout

        again = run_stack("up", "--state-dir", str(state_dir), "--api-port", "0")
        assert again.returncode == 1
        assert "already running" in again.stderr
        assert run_stack("status", "--state-dir", str(state_dir)).returncode == 0

        stopped = run_stack("down", "--state-dir", str(state_dir))
        assert stopped.returncode == 0, stopped.stderr
        assert not any(alive(pid) for pid in started.values())
        assert bystander.poll() is None, "down must stop only the processes it recorded"
        assert run_stack("status", "--state-dir", str(state_dir)).returncode == 1
        assert (state_dir / "logs" / "api.log").read_text().strip()
    finally:
        bystander.send_signal(signal.SIGTERM)
        bystander.wait(timeout=10)


@pytest.mark.slow
def test_redis_data_survives_down_and_up_in_the_same_state_dir(
    state_dir: Path, env_files: tuple[Path, Path]
) -> None:
    first = up(state_dir, env_files, "--workers", "0")
    with redis.Redis.from_url(first["redis_url"]) as client:
        client.set("local-stack-marker", "kept")
    assert run_stack("down", "--state-dir", str(state_dir)).returncode == 0

    second = up(state_dir, env_files, "--workers", "0")
    with redis.Redis.from_url(second["redis_url"]) as client:
        assert client.get("local-stack-marker") == b"kept"
    assert any((state_dir / "redis").rglob("*.aof")), "Redis must keep an append-only file"


@pytest.mark.slow
def test_a_bad_setting_fails_in_one_line_and_leaves_nothing_running(
    state_dir: Path, env_files: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad_api_env"
    bad.write_text("API_KEYS=not-a-pair\n", encoding="utf-8")
    redis_port = free_port()
    result = run_stack(
        "up",
        "--state-dir",
        str(state_dir),
        "--api-port",
        "0",
        "--workers",
        "1",
        "--redis-port",
        str(redis_port),
        "--api-env",
        str(bad),
        "--worker-env",
        str(env_files[1]),
        "--timeout",
        "30",
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "api exited during startup" in lines[0]
    assert "API_KEYS" in lines[0]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", redis_port)) != 0, "its Redis must be stopped"
    assert not (state_dir / "stack.json").exists()


def test_a_missing_env_file_is_a_one_line_error(state_dir: Path, tmp_path: Path) -> None:
    result = run_stack("up", "--state-dir", str(state_dir), "--api-env", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"stack.py: env file {tmp_path / 'nope'} does not exist"


def test_compose_hostnames_are_not_used_for_traces_unless_given() -> None:
    assert stack_module.local_jaeger_uri("otel-collector:4318", None) == ""
    assert stack_module.local_jaeger_uri("http://tempo:4318", None) == ""
    assert stack_module.local_jaeger_uri("127.0.0.1:4318", None) == "127.0.0.1:4318"
    assert stack_module.local_jaeger_uri("otel-collector:4318", "localhost:4318") == (
        "localhost:4318"
    )
    assert stack_module.local_jaeger_uri(None, None) == ""


def test_local_redis_has_the_compose_durability_settings(tmp_path: Path) -> None:
    options = stack_module.redis_options(6390, tmp_path, "always")
    pairs = dict(zip(options[::2], options[1::2], strict=True))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "always"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--bind"] == "127.0.0.1"


def test_down_without_a_stack_is_harmless(state_dir: Path) -> None:
    result = run_stack("down", "--state-dir", str(state_dir))
    assert result.returncode == 0
    assert result.stdout.strip() == "stack down"


def test_process_identity_guards_against_pid_reuse() -> None:
    pid = os.getpid()
    start = stack_module.process_start_time(pid)
    assert stack_module.is_running(pid, start)
    assert not stack_module.is_running(pid, "0")
