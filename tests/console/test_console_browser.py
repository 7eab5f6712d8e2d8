"""The web console in a real browser: Debian's ``chromium`` driven by Playwright (no browser
download), against a real ``ai-orchestrator run`` process (API and worker on the in-memory
broker, the echo provider). One browser and one process per module; a fresh browser
context (so a fresh ``sessionStorage``) per test. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from playwright import sync_api as playwright_sync

from tests.e2e.support import Services, clean_env, free_port

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]

KEY = "console-acme-key-0123456789"
OTHER = "console-globex-key-012345678"
ADMIN = "console-ops-key-0123456789ab"
TRACE_URL = "http://grafana.invalid/explore?trace={trace_id}"


def _request(url: str, key: str | None = None, body: object = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    services = Services(tmp_path_factory.mktemp("console-services"))
    port = free_port()
    env = clean_env(
        API_KEYS=f"acme:{KEY},globex:{OTHER},ops:{ADMIN}",
        ADMIN_TENANTS="ops",
        CONSOLE_TRACE_URL=TRACE_URL,
    )
    service = services.start("run", ["run", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # a hang guard
    while True:
        assert service.alive(), service.tail()
        try:
            status, health = _request(f"{url}/health")
            if status == 200 and health["workers"]:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, service.tail()
        time.sleep(0.1)
    try:
        yield url
    finally:
        services.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


class Console:
    """A page of the console, with the console errors and dialogs it produced."""

    def __init__(self, page: Any, base_url: str, shots: Path) -> None:
        self.page = page
        self.base_url = base_url
        self.shots = shots
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def open(self) -> Any:
        return self.page.goto(f"{self.base_url}/console")

    def sign_in(self, key: str = KEY) -> None:
        self.open()
        self.by("api-key").fill(key)
        self.by("sign-in").click()
        self.by("task-list").wait_for()

    def submit(self, prompt: str, parameters: dict[str, Any] | None = None) -> str:
        self.page.goto(f"{self.base_url}/console#/new")
        self.by("prompt").fill(prompt)
        self.by("model").fill("echo")
        if parameters is not None:
            self.by("parameters").fill(json.dumps(parameters))
        self.by("submit").click()
        self.page.wait_for_url("**/console#/task/*")
        return self.page.url.rsplit("/", 1)[1]

    def wait_status(self, status: str) -> None:
        self.page.wait_for_function(
            "s => document.querySelector('[data-testid=status]')?.textContent === s",
            arg=status,
        )

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture
def console(browser: Any, base_url: str, tmp_path: Path) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)  # a hang guard
    yield Console(page, base_url, tmp_path)
    context.close()


def test_the_page_is_served_with_a_strict_csp_and_loads_without_errors(console: Console) -> None:
    response = console.open()
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    console.by("api-key").wait_for()
    console.sign_in()
    console.shot("signed-in")
    assert console.errors == []


def test_a_bad_key_is_refused_and_nothing_is_stored(console: Console) -> None:
    console.open()
    console.by("api-key").fill("not-a-key")
    console.by("sign-in").click()
    console.page.get_by_text("That API key is not valid.").wait_for()
    assert console.page.evaluate("sessionStorage.length") == 0
    assert "not-a-key" not in console.page.url


def test_a_submitted_answer_streams_in_and_the_task_shows_its_details(console: Console) -> None:
    console.sign_in()
    words = " ".join(f"word{i}" for i in range(30))
    task_id = console.submit(words, {"chunk_delay_ms": 150})
    # Part of the answer is on the page while the task still runs: it streamed.
    console.page.wait_for_function(
        "() => document.querySelector('[data-testid=answer]').textContent.startsWith('word0')"
        " && document.querySelector('[data-testid=status]').textContent === 'running'"
    )
    console.shot("streaming")
    console.wait_status("succeeded")
    assert console.by("answer").text_content() == words
    href = console.by("trace-link").get_attribute("href")
    assert href.startswith("http://grafana.invalid/explore?trace=")
    assert len(href.rsplit("=", 1)[1]) == 32
    console.page.locator("dt", has_text="Attempts").wait_for()
    console.page.goto(f"{console.base_url}/console#/tasks")
    console.page.locator(f"[data-testid=task-row][data-task-id='{task_id}']").wait_for()
    console.shot("task-list")
    assert console.errors == []


def test_a_running_task_is_cancelled_from_its_page(console: Console) -> None:
    console.sign_in()
    console.submit("never answered", {"latency_ms": 20000})
    console.wait_status("running")
    console.by("cancel").click()
    console.wait_status("cancelled")
    assert console.by("cancel").is_disabled()
    console.shot("cancelled")


def test_a_failed_task_shows_its_error(console: Console) -> None:
    console.sign_in()
    console.submit("please fail", {"fail": "invalid_request"})
    console.wait_status("failed")
    error = console.by("task-error")
    error.get_by_text("invalid_request").wait_for()
    assert "echo was asked to fail" in error.text_content()
    console.shot("failed")


def test_a_prompt_of_html_is_shown_as_text(console: Console) -> None:
    console.sign_in()
    prompt = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    console.submit(prompt)
    console.wait_status("succeeded")
    assert console.by("answer").text_content() == prompt
    assert console.page.locator("img").count() == 0
    console.page.goto(f"{console.base_url}/console#/tasks")
    console.by("task-row").first.wait_for()
    console.shot("xss-as-text")
    assert console.dialogs == []
    assert console.errors == []


def test_the_keyboard_alone_signs_in_and_submits(console: Console) -> None:
    page = console.page
    console.open()
    page.keyboard.type(KEY)  # the key field has the focus
    page.keyboard.press("Enter")
    console.by("task-list").wait_for()
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('href')") == "#/new":
            break
    else:
        pytest.fail("Tab never reached the New task link")
    page.keyboard.press("Enter")
    console.by("prompt").wait_for()
    page.keyboard.type("typed on the keyboard")  # the prompt has the focus
    page.keyboard.press("Control+Enter")
    console.wait_status("succeeded")
    assert console.by("answer").text_content() == "typed on the keyboard"


def test_the_console_is_readable_360_px_wide(console: Console) -> None:
    console.page.set_viewport_size({"width": 360, "height": 740})
    console.sign_in()
    console.submit("a narrow screen")
    console.wait_status("succeeded")
    assert console.page.evaluate("document.documentElement.scrollWidth") <= 360
    console.shot("task-360px")
    console.page.goto(f"{console.base_url}/console#/tasks")
    console.by("task-row").first.wait_for()
    assert console.page.evaluate("document.documentElement.scrollWidth") <= 360
    console.shot("tasks-360px")


def test_another_tenants_task_is_not_shown(console: Console, base_url: str) -> None:
    status, task = _request(f"{base_url}/v1/tasks", OTHER, {"prompt": "globex secret"})
    assert status == 202
    status, _ = _request(f"{base_url}/v1/tasks", KEY, {"prompt": "acme's own"})
    assert status == 202
    console.sign_in()
    console.page.goto(f"{console.base_url}/console#/task/{task['id']}")
    console.wait_status("not found")
    assert "globex secret" not in console.page.content()
    console.page.goto(f"{console.base_url}/console#/tasks")
    console.by("task-row").first.wait_for()  # acme's own task
    assert console.page.locator(f"[data-task-id='{task['id']}']").count() == 0


def test_batches_show_their_progress_and_the_models_are_listed(console: Console) -> None:
    console.sign_in(ADMIN)
    console.page.goto(f"{console.base_url}/console#/batches")
    console.by("batches-empty").wait_for()  # this tenant has none
    # A batch of two lines, through the official SDK, as a user would submit it.
    client = openai.OpenAI(base_url=f"{console.base_url}/v1", api_key=KEY, max_retries=0)
    lines = b"".join(
        orjson.dumps(
            {
                "custom_id": f"line-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "echo", "messages": [{"role": "user", "content": f"q{n}"}]},
            }
        )
        + b"\n"
        for n in range(2)
    )
    uploaded = client.files.create(file=("lines.jsonl", io.BytesIO(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    console.by("sign-out").click()
    console.sign_in()
    console.page.goto(f"{console.base_url}/console#/batches")
    console.page.locator("[data-testid=batch-row]", has_text=batch.id).wait_for()
    console.page.goto(f"{console.base_url}/console#/models")
    console.page.locator("[data-testid=model-row]", has_text="echo").first.wait_for()


def test_an_operator_sees_the_queue_and_workers_and_a_tenant_does_not(console: Console) -> None:
    console.sign_in()
    assert console.page.locator("#nav-operator").is_hidden()
    console.by("sign-out").click()
    assert console.page.evaluate("sessionStorage.length") == 0
    console.sign_in(ADMIN)
    assert console.page.locator("#nav-operator").is_visible()
    console.page.goto(f"{console.base_url}/console#/operator")
    console.by("queue-list").wait_for()
    console.by("worker-list").wait_for()
    console.page.get_by_text("No dead letters.").wait_for()
    console.shot("operator")
    assert console.errors == []
