"""``EVENT_LOOP``: the loop a service runs on (``orchestrator_settings.loop``)."""

from __future__ import annotations

import asyncio
import sys
import warnings

import pytest

from orchestrator_settings import ConfigError
from orchestrator_settings.loop import loop_name, run


async def _loop_kind() -> str:
    await asyncio.sleep(0)
    return loop_name()


@pytest.mark.parametrize(
    ("environ", "kind"),
    [
        ({}, "uvloop"),  # auto, with uvloop installed (a dependency)
        ({"EVENT_LOOP": "auto"}, "uvloop"),
        ({"EVENT_LOOP": "uvloop"}, "uvloop"),
        ({"EVENT_LOOP": " UVLoop "}, "uvloop"),
        ({"EVENT_LOOP": "asyncio"}, "asyncio"),
    ],
)
def test_the_loop_is_the_one_event_loop_names(environ: dict[str, str], kind: str) -> None:
    assert run(_loop_kind(), environ) == kind


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError

    assert run(_loop_kind(), {}) == "asyncio"
    with pytest.raises(ConfigError, match=r"EVENT_LOOP.*uvloop is not installed"):
        run(_loop_kind(), {"EVENT_LOOP": "uvloop"})


def test_an_unknown_loop_is_a_config_error_and_nothing_runs() -> None:
    ran = []

    async def main() -> None:
        ran.append(True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine never awaited would warn
        with pytest.raises(ConfigError, match=r"EVENT_LOOP.*'tokio' is not one of"):
            run(main(), {"EVENT_LOOP": "tokio"})
    assert ran == []
