"""The Dockerfile's commands, replayed without Docker, make a working API and worker.

The build stage's ENV/WORKDIR/COPY/RUN lines run in a temporary directory (absolute container
paths re-rooted there, the build context filtered by .dockerignore, pip's cache reused), then
both services start with the image's ENTRYPOINT and the compose commands, against a throwaway
redis-server; the HEALTHCHECK command must pass and a submitted task must come back answered.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import attrs
import pytest

from tests.deployment.support import (
    DOCKERFILE,
    ROOT,
    Dockerfile,
    DockerIgnore,
    compose,
    healthcheck_command,
    parse_env_instruction,
    split_run,
)
from tests.support.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.redis]

API_KEY = "image-test-key-0123456789"
BUILD_TIMEOUT = 600.0


@attrs.define
class Image:
    """What the replayed Dockerfile leaves: a re-rooted filesystem and the runtime settings."""

    root: Path
    env: dict[str, str]
    entrypoint: list[str]
    healthcheck: list[str]

    def resolve(self, argv: list[str], env: Mapping[str, str]) -> list[str]:
        """argv with the program found on the image's PATH and container paths re-rooted."""
        program = shutil.which(argv[0], path=env["PATH"])
        assert program is not None, f"{argv[0]} is not on the image's PATH"
        rest = [
            str(self.root / arg.lstrip("/"))
            if arg.startswith("/") and (self.root / arg.lstrip("/")).exists()
            else arg
            for arg in argv[1:]
        ]
        return [program, *rest]

    def start(
        self, command: list[str], env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        argv = self.resolve([*self.entrypoint, *command], env)
        assert Path(argv[0]).is_relative_to(self.root), "the service must come from the image"
        with log.open("wb") as out:
            return subprocess.Popen(
                argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=self.root
            )


def _reroot(root: Path, value: str) -> str:
    return str(root / value.lstrip("/")) if value.startswith("/") else value


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)


def _copy(sources: list[Path], dest: Path, dest_is_dir: bool) -> None:
    for source in sources:
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        elif dest_is_dir:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / source.name)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


def replay_dockerfile(tmp: Path) -> Image:
    parsed = Dockerfile.parse(DOCKERFILE)
    context = tmp / "context"
    for relative in DockerIgnore.load(ROOT / ".dockerignore").context_files(ROOT):
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, context / relative)
    root = tmp / "root"
    root.mkdir()
    shim = tmp / "shim"  # the base image's `python`
    shim.mkdir()
    (shim / "python").symlink_to(sys.executable)
    host = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    host["PATH"] = f"{shim}{os.pathsep}{host['PATH']}"

    env: dict[str, str] = {}
    entrypoint: list[str] = []
    healthcheck: list[str] = []
    for stage in parsed.stages:
        env = dict(host)
        workdir = root
        for instruction in stage.instructions:
            keyword, args = instruction.keyword, instruction.args
            if keyword == "ENV":
                for key, value in parse_env_instruction(args):
                    # Literal container paths move under root; expansions already did.
                    env[key] = _expand(_reroot(root, value), env)
            elif keyword == "WORKDIR":
                workdir = Path(_reroot(root, args))
                workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                words = args.split()
                if words[0].startswith("--from="):
                    # Same path in both stages: the replayed build already put it there.
                    assert words[1] == words[2], args
                    continue
                *sources, dest = words
                dest_path = Path(_reroot(root, dest)) if dest.startswith("/") else workdir / dest
                dest_is_dir = dest.endswith("/") or len(sources) > 1
                _copy([context / source for source in sources], dest_path, dest_is_dir)
            elif keyword == "RUN":
                _, command = split_run(args)
                if stage.name != "build":
                    # Creating the runtime user needs root on the host; the static test checks
                    # the runtime stage runs nothing else.
                    assert command.startswith("groupadd"), command
                    continue
                result = subprocess.run(
                    ["sh", "-c", command],
                    cwd=workdir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT,
                )
                assert result.returncode == 0, f"RUN {command}\n{result.stdout}\n{result.stderr}"
            elif keyword == "ENTRYPOINT":
                entrypoint = instruction.exec_form() or []
            elif keyword == "HEALTHCHECK":
                healthcheck = healthcheck_command(instruction)
    return Image(root=root, env=env, entrypoint=entrypoint, healthcheck=healthcheck)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return replay_dockerfile(tmp_path_factory.mktemp("image"))


@pytest.fixture
def services(image: Image, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``api``/``worker`` from the image; SIGTERM (then SIGKILL) at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(service: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        command = compose()["services"][service]["command"]
        process = image.start(command, env, tmp_path / f"{service}-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run_healthcheck(
    image: Image, env: Mapping[str, str], pid: int
) -> subprocess.CompletedProcess[str]:
    env = {**env, "HEALTHCHECK_PID": str(pid)}
    return subprocess.run(
        image.resolve(image.healthcheck, env), env=env, capture_output=True, text=True, timeout=30
    )


def wait_healthy(image: Image, env: Mapping[str, str], process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        result = run_healthcheck(image, env, process.pid)
        if result.returncode == 0:
            return result.stdout
        assert time.monotonic() < deadline, f"never healthy: {result.stdout}{result.stderr}"
        time.sleep(0.3)


def service_env(image: Image, redis: RedisServer, **extra: str) -> dict[str, str]:
    return {**image.env, "REDIS_URI": redis.url, "JAEGER_URI": "", "LOG_LEVEL": "INFO", **extra}


def test_installed_distributions_are_the_pinned_ones(image: Image) -> None:
    pinned = {}
    for line in (ROOT / "deployment" / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
    frozen = subprocess.run(
        image.resolve(["python", "-m", "pip", "freeze"], image.env),
        env=image.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    installed = {}
    for line in frozen.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            installed[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert installed, frozen
    for name, version in installed.items():
        assert pinned.get(name) == version, (
            f"{name}=={version} is not in deployment/constraints.txt"
        )


def test_image_api_and_worker_answer_a_task(
    image: Image,
    services: Callable[..., subprocess.Popen[bytes]],
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_server_factory(appendonly=True)
    port = free_port()
    api_env = service_env(
        image, redis, PORT=str(port), HOST="127.0.0.1", API_KEYS=f"image:{API_KEY}"
    )
    api = services("api", api_env)
    services("worker", service_env(image, redis, METRICS_PORT=str(free_port())))

    assert wait_healthy(image, api_env, api).startswith("healthy")
    submit = [
        *image.resolve(["ai-orchestrator"], image.env),
        "submit",
        "hello from the image",
        "--wait",
        "--timeout",
        "60",
        "--url",
        f"http://127.0.0.1:{port}",
        "--api-key",
        API_KEY,
    ]
    result = subprocess.run(submit, env=image.env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "hello from the image" in result.stdout


def test_healthcheck_fails_when_the_api_loses_redis(
    image: Image,
    services: Callable[..., subprocess.Popen[bytes]],
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_server_factory()
    port = free_port()
    api_env = service_env(
        image, redis, PORT=str(port), HOST="127.0.0.1", API_KEYS=f"image:{API_KEY}"
    )
    api = services("api", api_env)
    wait_healthy(image, api_env, api)
    redis.kill()
    deadline = time.monotonic() + 30
    while (result := run_healthcheck(image, api_env, api.pid)).returncode == 0:
        assert time.monotonic() < deadline, "still healthy without Redis"
        time.sleep(0.3)
    assert result.returncode == 1
    assert "503" in result.stdout


def test_worker_healthcheck_reads_its_metrics_port(
    image: Image,
    services: Callable[..., subprocess.Popen[bytes]],
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    worker_sources = ROOT / "services" / "worker" / "orchestrator_worker"
    if not any("METRICS_PORT" in p.read_text() for p in worker_sources.rglob("*.py")):
        pytest.skip("the worker has no METRICS_PORT endpoint yet")
    redis = redis_server_factory()
    env = service_env(image, redis, METRICS_PORT=str(free_port()), METRICS_HOST="127.0.0.1")
    worker = services("worker", env)
    assert wait_healthy(image, env, worker).startswith("healthy")
