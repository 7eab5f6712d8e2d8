"""The web console in a real browser, against a real ``ai-orchestrator run`` process (API and
worker on the in-memory broker, the echo provider): a tenant's views."""

from __future__ import annotations

import io
from collections.abc import Iterator

import openai
import orjson
import pytest

from tests.console.support import (
    ADMIN,
    KEY,
    OTHER,
    Console,
    CuttableProxy,
    request_json,
    start_console_service,
)

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    services, url = start_console_service(tmp_path_factory.mktemp("console-services"))
    try:
        yield url
    finally:
        services.stop_all()


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
    details = console.page.locator("dl.details")
    details.locator("dt", has_text="Attempts").wait_for()

    def detail(name: str) -> str:
        return str(details.locator(f"dt:text-is('{name}') + dd").text_content())

    assert detail("Attempts") == "1"
    assert detail("Usage") == "input tokens 30, output tokens 30"
    assert detail("Model") == "echo"
    for stamp in ("Created", "Started", "Finished"):
        assert detail(stamp)[:1].isdigit(), stamp
    assert detail("Trace id") == href.rsplit("=", 1)[1]
    console.open("#/tasks")
    console.page.locator(f"[data-testid=task-row][data-task-id='{task_id}']").wait_for()
    console.shot("task-list")
    assert console.errors == []


def test_the_task_list_follows_a_task_live(console: Console) -> None:
    console.sign_in()
    task_id = console.submit("slow to answer", {"latency_ms": 5000})
    console.open("#/tasks")
    row = console.page.locator(f"[data-testid=task-row][data-task-id='{task_id}']")
    # Running shows about a second in (worker events: "started"), then the list's next poll.
    row.get_by_text("running").wait_for()
    assert row.locator("td").nth(2).text_content() == "echo"
    row.get_by_text("succeeded").wait_for()  # no reload: the list polls
    wait, run = (row.locator("td").nth(n).text_content() for n in (3, 4))
    assert wait.endswith(" s")
    assert run.endswith(" s")
    assert float(run.split()[0]) >= 4.5  # the 5 s latency, on the clock of the list


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
    console.open("#/tasks")
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
    console.open("#/tasks")
    console.by("task-row").first.wait_for()
    assert console.page.evaluate("document.documentElement.scrollWidth") <= 360
    console.shot("tasks-360px")
    console.open("#/new")
    console.by("prompt").wait_for()
    assert console.page.evaluate("document.documentElement.scrollWidth") <= 360
    console.shot("new-360px")


def test_another_tenants_task_is_not_shown(console: Console, base_url: str) -> None:
    status, task = request_json(f"{base_url}/v1/tasks", OTHER, {"prompt": "globex secret"})
    assert status == 202
    status, _ = request_json(f"{base_url}/v1/tasks", KEY, {"prompt": "acme's own"})
    assert status == 202
    console.sign_in()
    console.open(f"#/task/{task['id']}")
    console.wait_status("not found")
    assert "globex secret" not in console.page.content()
    console.open("#/tasks")
    console.by("task-row").first.wait_for()  # acme's own task
    assert console.page.locator(f"[data-task-id='{task['id']}']").count() == 0


def test_batches_show_their_progress_and_the_models_are_listed(console: Console) -> None:
    console.sign_in(ADMIN)
    console.open("#/batches")
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
    console.open("#/batches")
    row = console.page.locator("[data-testid=batch-row]", has_text=batch.id)
    row.wait_for()
    row.get_by_text("2/2").wait_for()  # its progress, refreshed live until done
    assert row.locator("progress").get_attribute("value") == "2"
    console.open("#/models")
    console.page.locator("[data-testid=model-row]", has_text="echo").first.wait_for()


def test_an_operator_sees_the_queue_and_workers_and_a_tenant_does_not(console: Console) -> None:
    console.sign_in()
    assert console.page.locator("#nav-operator").is_hidden()
    console.open("#/operator")  # typed in by hand: the task list, and no operator call
    console.by("task-list").wait_for()
    assert [r.url for r in console.requests if "/v1/admin/" in r.url] == []
    console.by("sign-out").click()
    assert console.page.evaluate("sessionStorage.length") == 0
    console.sign_in(ADMIN)
    assert console.page.locator("#nav-operator").is_visible()
    console.open("#/operator")
    console.by("queue-list").wait_for()
    console.by("worker-list").wait_for()
    console.page.get_by_text("No dead letters.").wait_for()
    console.shot("operator")
    assert console.errors == []


def test_the_page_talks_only_to_its_server_and_keeps_the_key_out_of_urls_and_cookies(
    console: Console,
) -> None:
    console.sign_in()
    console.submit("where do requests go")
    console.wait_status("succeeded")
    for view in ("#/tasks", "#/batches", "#/models", "#/new"):
        console.open(view)
        console.page.wait_for_load_state("networkidle")
    urls = [r.url for r in console.requests]
    assert len(urls) > 10
    assert [u for u in urls if not u.startswith(console.base_url + "/")] == []
    assert [u for u in urls if KEY in u] == []
    assert KEY not in console.page.url
    assert console.page.context.cookies() == []
    assert console.page.evaluate("localStorage.length") == 0
    assert console.page.evaluate("Object.values(sessionStorage)") == [KEY]


def test_a_conversation_is_submitted_with_its_turns(console: Console) -> None:
    page = console.page
    console.sign_in()
    console.open("#/new")
    page.get_by_label("Conversation").check()
    assert console.by("prompt").is_hidden()
    turns = page.locator("#turns .turn")
    turns.nth(0).locator("textarea").fill("first question")
    page.get_by_role("button", name="Add message").click()
    turns.nth(1).locator("select").select_option("assistant")
    turns.nth(1).locator("textarea").fill("first answer")
    page.get_by_role("button", name="Add message").click()
    turns.nth(2).locator("textarea").fill("the last question")
    console.by("model").fill("echo")
    console.shot("conversation")
    console.by("submit").click()
    page.wait_for_url("**/console#/task/*")
    console.wait_status("succeeded")
    # echo answers with the conversation's last user message.
    assert console.by("answer").text_content() == "the last question"


def test_the_system_prompt_and_parameters_go_with_the_prompt(console: Console) -> None:
    page = console.page
    console.sign_in()
    console.open("#/new")
    console.by("prompt").fill("what is the answer?")
    console.by("system").fill("Answer in one word.")
    console.by("model").fill("echo")
    sent_tasks: list[str] = []
    page.on("request", lambda r: sent_tasks.append(r.url) if r.method == "POST" else None)
    for bad, message in (
        ("{temperature: 0.2}", "Parameters are not valid JSON."),
        ("[0.2]", "Parameters must be a JSON object."),
    ):
        console.by("parameters").fill(bad)
        console.by("submit").click()
        page.get_by_text(message).wait_for()
    assert sent_tasks == []  # refused in the page: nothing was sent
    console.by("parameters").fill('{"temperature": 0.2}')
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/tasks")) as sent:
        console.by("submit").click()
    assert sent.value.post_data_json == {
        "prompt": "what is the answer?",
        "system": "Answer in one word.",
        "model": "echo",
        "parameters": {"temperature": 0.2},
    }
    console.wait_status("succeeded")
    assert console.by("answer").text_content() == "what is the answer?"


#: Records every text the answer shows, so a test can check each one (not only the last).
_RECORD_ANSWERS = """() => {
  window.answers = [];
  const answer = document.querySelector('[data-testid=answer]');
  new MutationObserver(() => window.answers.push(answer.textContent))
    .observe(answer, {childList: true, characterData: true, subtree: true});
}"""


def test_the_stream_resumes_after_a_network_drop_without_losing_or_repeating_text(
    console: Console, base_url: str
) -> None:
    with CuttableProxy(int(base_url.rsplit(":", 1)[1])).running() as proxy:
        console.base_url = proxy.url
        console.sign_in()
        words = " ".join(f"word{i}" for i in range(40))
        console.submit(words, {"chunk_delay_ms": 100})
        console.page.evaluate(_RECORD_ANSWERS)
        console.page.wait_for_function(
            "() => document.querySelector('[data-testid=answer]').textContent.includes('word3 ')"
        )
        proxy.cut()  # mid-answer: the stream's connection is reset
        console.page.get_by_text("connection lost: reconnecting…").wait_for()
        dropped_at = console.by("answer").text_content()
        console.shot("stream-dropped")
        console.wait_status("succeeded")
        console.shot("stream-resumed")
    assert console.by("answer").text_content() == words
    assert console.by("task-error").text_content() == ""  # a load the cut failed is not news
    shown = console.page.evaluate("window.answers")
    # Every text shown was a prefix of the answer: no chunk was lost or shown twice, ...
    assert all(words.startswith(text) for text in shown), shown
    # ... and it grew on from where the drop left it, before the final result replaced it.
    assert any(len(dropped_at) < len(text) < len(words) for text in shown), shown
    streams = [r for r in console.requests if "/events" in r.url]
    assert len(streams) >= 2
    assert streams[0].headers.get("last-event-id") is None
    assert streams[-1].headers.get("last-event-id")
