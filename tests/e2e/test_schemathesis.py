"""The OpenAPI document and the server agree: schemathesis runs every check, with its
stateful phase and at least 50 examples per operation, against a live ``ai-orchestrator
run`` (the API and an echo worker in one process), and must find nothing. (All operations
but the WebSocket one, which schemathesis cannot open.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.support import Services, clean_env, free_port, wait_healthy, wait_until
from tests.support.fake_llm import FakeLLM

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


async def test_schemathesis_finds_no_disagreement_between_the_document_and_the_server(
    services: Services, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    # The providers are fakes on loopback (answering every prompt), so that a model call
    # fails only as the fuzzed request makes it fail, never for want of a provider.
    fake = FakeLLM()
    await fake.start()
    try:
        await _run_schemathesis(services, session, tmp_path, port, fake)
    finally:
        await fake.close()


async def _run_schemathesis(
    services: Services, session: aiohttp.ClientSession, tmp_path: Path, port: int, fake: FakeLLM
) -> None:
    env = clean_env(
        API_KEYS="acme:st-acme-key,globex:st-globex-key",
        OPENAI_BASE_URL=fake.openai_base_url,
        OPENAI_API_KEY="sk-fake",
        GEMINI_BASE_URL=fake.gemini_base_url,
        GEMINI_API_KEY="gemini-fake",
    )
    api = services.start("run", ["run", "--port", str(port)], env)
    api.url = f"http://127.0.0.1:{port}"
    await wait_healthy(session, api)
    # The document schemathesis reads must name the models the worker serves (a submit of
    # another is a 400): wait for the worker's advert before it is fetched.
    await wait_until("the worker's advert", lambda: _workers_alive(session, api.url), timeout=30)

    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{api.url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "50",
        "--header",
        "Authorization: Bearer st-acme-key",
        "--request-timeout",
        "20",
        # One worker: with threads, Python 3.11.7's ast.parse (hypothesis describes its
        # lambdas with it) can fail with "AST constructor recursion depth mismatch".
        "--workers",
        "1",
        "--seed",
        os.environ.get("SCHEMATHESIS_SEED", "1"),  # fixed for CI; vary it to explore
        # Its HTTP client cannot speak WebSocket: a valid request to /ws upgrades the
        # connection and then breaks the next request on it. tests/api/test_http_openapi.py
        # holds /ws to the document instead (the upgrade headers it requires, the 400).
        "--exclude-operation-id",
        "taskWebSocket",
        "--no-color",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,  # its caches and reports stay out of the tree
        env=clean_env(),
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 480)  # a hang guard
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise AssertionError("schemathesis still running after 480 s") from None
    report = out.decode(errors="replace")
    assert process.returncode == 0, report
    assert "No issues found" in report or " passed" in report, report
    assert api.alive(), api.tail()


async def _workers_alive(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(f"{url}/health") as response:
        return bool((await response.json()).get("workers"))
