"""A provider key the worker could never send is refused as ``ai-orchestrator worker``
starts: one line naming the variable, the key itself never printed."""

from __future__ import annotations

import pytest

from tests.e2e.support import clean_env
from tests.e2e.test_cli import dead_redis_uri, run_cli

pytestmark = pytest.mark.slow

CANARY = "sk-canary-7d2e"


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "GEMINI_API_KEY"])
@pytest.mark.parametrize("inside", ["\r\n", "\n", "\x1b", "\x7f"], ids=["CRLF", "LF", "ESC", "DEL"])
async def test_a_provider_key_with_a_control_character_stops_the_worker_in_one_line(
    variable: str, inside: str
) -> None:
    # Nothing listens at REDIS_URI: the worker must refuse before it would connect.
    env = clean_env(REDIS_URI=dead_redis_uri())
    env[variable] = f"{CANARY}{inside}X-Injected: 1"

    outcome = await run_cli(["worker"], env, timeout=30)

    assert outcome.returncode != 0
    assert len(outcome.stderr_lines) == 1, outcome.stderr
    assert variable in outcome.stderr
    assert "control character" in outcome.stderr
    for shown in (outcome.stdout, outcome.stderr):
        assert CANARY not in shown
        assert "Injected" not in shown
