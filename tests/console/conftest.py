"""The console's browser tests: Debian's ``chromium`` driven by Playwright (no browser
download), against real ``ai-orchestrator run`` processes. One browser and one service per
module (each module's ``base_url`` fixture); a fresh browser context (so a fresh
``sessionStorage``) per test. Screenshots go to the test's tmp dir (under pytest's basetemp,
never the work tree)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api as playwright_sync

from tests.console.support import CHROMIUM, Console


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, one per module (the sync API keeps its own loop while it runs)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def console(browser: Any, base_url: str, tmp_path: Path) -> Iterator[Console]:
    """A fresh browser context on the module's service (its ``base_url`` fixture)."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)  # a hang guard
    yield Console(page, base_url, tmp_path)
    context.close()
