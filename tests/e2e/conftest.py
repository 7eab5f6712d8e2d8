"""Fixtures of the end-to-end tests: service processes that are always stopped, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.support import Services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Start ``ai-orchestrator`` processes; every one is stopped by PID at teardown.

    Their log tails are printed at teardown (pytest shows them when the test failed).
    """
    started = Services(tmp_path / "services")
    yield started
    started.stop_all()
    print(started.logs())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
