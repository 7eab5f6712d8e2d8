"""The Dockerfile's shape (multi-stage, slim pinned base, non-root, healthcheck) and context."""

from __future__ import annotations

import re

from tests.deployment.support import DOCKERFILE, ROOT, Dockerfile, DockerIgnore, split_run

DOCKERIGNORE = ROOT / ".dockerignore"


def dockerfile() -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE)


def test_every_stage_starts_from_a_pinned_python_311_slim_image() -> None:
    parsed = dockerfile()
    assert len(parsed.stages) >= 2, "multi-stage: build, then a runtime without build leftovers"
    for stage in parsed.stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", parsed.base_image(stage))


def test_runtime_stage_copies_only_the_virtualenv_from_the_build_stage() -> None:
    runtime = dockerfile().stages[-1]
    from_build = [copy.args for copy in runtime.all("COPY") if copy.args.startswith("--from=")]
    assert from_build == ["--from=build /opt/venv /opt/venv"]


def test_runtime_stage_installs_nothing_and_keeps_no_build_tools() -> None:
    runtime = dockerfile().stages[-1]
    for run in runtime.all("RUN"):
        _, command = split_run(run.args)
        assert not re.search(r"\b(apt-get|apk|pip|gcc|make|build-essential)\b", command), command
        assert re.match(r"groupadd .*&& useradd ", command), command


def test_the_install_uses_the_pinned_constraints() -> None:
    build = dockerfile().stage("build")
    commands = [split_run(run.args)[1] for run in build.all("RUN")]
    assert "pip install -c deployment/constraints.txt ." in commands
    # The pip cache is a BuildKit cache mount: never part of a layer.
    install = next(run for run in build.all("RUN") if "pip install" in run.args)
    assert "--mount=type=cache,target=/root/.cache/pip" in split_run(install.args)[0]


def test_the_image_runs_as_a_non_root_user() -> None:
    user = dockerfile().stages[-1].last("USER")
    assert user is not None
    assert user.args.split(":")[0] not in ("root", "0")


def test_the_image_has_a_healthcheck_and_runs_the_api_by_default() -> None:
    runtime = dockerfile().stages[-1]
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck is not None
    assert "CMD [" in healthcheck.args
    entrypoint = runtime.last("ENTRYPOINT")
    cmd = runtime.last("CMD")
    assert entrypoint is not None
    assert cmd is not None
    assert entrypoint.exec_form() == ["ai-orchestrator"]
    assert cmd.exec_form() == ["api"]


def test_everything_copied_is_in_the_build_context() -> None:
    ignore = DockerIgnore.load(DOCKERIGNORE)
    context = set(ignore.context_files(ROOT))
    for stage in dockerfile().stages:
        for copy in stage.all("COPY"):
            if copy.args.startswith("--from="):
                continue
            *sources, _ = copy.args.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), source
                if path.is_dir():
                    assert any(name.startswith(source + "/") for name in context), source
                else:
                    assert source in context, f"{source} is excluded by .dockerignore"


def test_build_context_leaves_out_secrets_tests_and_caches() -> None:
    ignore = DockerIgnore.load(DOCKERIGNORE)
    for path in (
        ".api_env",
        ".worker_env",
        ".env",
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "deployment/local/.state/stack.json",
        "libs/broker/orchestrator_broker/__pycache__/protocol.cpython-311.pyc",
    ):
        assert ignore.excluded(path), path
    for path in ("pyproject.toml", "README.md", "libs/broker/orchestrator_broker/protocol.py"):
        assert not ignore.excluded(path), path
