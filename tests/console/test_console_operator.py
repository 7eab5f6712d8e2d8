"""The console's operator view in a real browser, against ``ai-orchestrator run`` on a
throwaway ``redis-server`` (the Redis Streams broker and store, as deployed) with
``MAX_ATTEMPTS=1``, so that a task the echo provider is told to fail retryably is
dead-lettered at its first attempt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.console.support import (
    ADMIN,
    KEY,
    Console,
    request_json,
    start_console_service,
    wait_for,
)
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis_server = RedisServer(tmp_path_factory.mktemp("console-redis"))
    redis_server.start()
    try:
        services, url = start_console_service(
            tmp_path_factory.mktemp("console-operator-services"),
            REDIS_URI=redis_server.url,
            MAX_ATTEMPTS="1",
        )
        try:
            yield url
        finally:
            services.stop_all()
    finally:
        redis_server.stop()


def _dead_letters(base_url: str) -> list[dict[str, Any]]:
    status, page = request_json(f"{base_url}/v1/admin/dead-letters?limit=500", ADMIN)
    assert status == 200, page
    return list(page["data"])


def _dead_lettered_task(base_url: str) -> str:
    """A task of ``acme`` that failed and was dead-lettered (its id)."""
    status, task = request_json(
        f"{base_url}/v1/tasks",
        KEY,
        {"prompt": "fail me", "model": "echo", "parameters": {"fail": "server_error"}},
    )
    assert status == 202, task
    wait_for(
        "the dead letter",
        lambda: any(d["task_id"] == task["id"] for d in _dead_letters(base_url)),
    )
    return str(task["id"])


def _depths(console: Console) -> list[tuple[str, str]]:
    rows = console.by("queue-depth")
    rows.first.wait_for()
    return [
        (row.get_attribute("data-priority"), row.locator("td").text_content()) for row in rows.all()
    ]


def test_the_queue_depth_is_shown_per_priority(console: Console) -> None:
    # The shape of the fair broker's answer: the stream's row (dispatched, not yet read),
    # then one per priority's waiting room.
    row = {"stream": "tasks", "group": "workers"}
    body = {
        "queues": [
            {**row, "priority": None, "backlog": 2, "pending": 4},
            *(
                {**row, "priority": p, "backlog": n, "pending": 0}
                for p, n in (("high", 3), ("normal", 12), ("low", 0))
            ),
        ],
        "priorities": {"low": 0, "normal": 12, "high": 3},
        "workers": [],
    }
    console.page.route("**/v1/admin/queues", lambda route: route.fulfill(json=body))
    console.sign_in(ADMIN)
    console.open("#/operator")
    assert _depths(console) == [("high", "3"), ("normal", "12"), ("low", "0")]
    assert console.by("queue-depth-total").locator("td").text_content() == "17"
    console.shot("queue-depth-per-priority")


def test_the_live_queue_depth_is_the_apis(console: Console, base_url: str) -> None:
    status, queues = request_json(f"{base_url}/v1/admin/queues", ADMIN)
    assert status == 200, queues
    console.sign_in(ADMIN)
    console.open("#/operator")
    console.by("worker-list").wait_for()
    # Null from a broker with one queue; {"high": n, "normal": n, "low": n} from the fair one.
    if queues["priorities"] is None:
        total = sum(q["backlog"] for q in queues["queues"])
        assert _depths(console) == [("all (one queue)", str(total))]
    else:
        assert {name for name, _ in _depths(console)} == set(queues["priorities"])
        console.by("queue-depth-total").wait_for()
    console.shot("operator")
    assert console.errors == []


def test_a_dead_letter_is_replayed_from_the_console(console: Console, base_url: str) -> None:
    task_id = _dead_lettered_task(base_url)
    status, before = request_json(f"{base_url}/v1/tasks/{task_id}", KEY)
    assert status == 200
    assert (before["status"], before["attempts"]) == ("failed", 1)
    console.sign_in(ADMIN)
    console.open("#/operator")
    row = console.page.locator(f"[data-testid=dead-letter-row][data-task-id='{task_id}']")
    row.get_by_text("attempts exhausted").wait_for()
    console.shot("dead-letter")
    row.get_by_test_id("replay").click()
    console.by("operator-status").get_by_text("Replayed 1 task(s).").wait_for()
    # It ran again under its id (and, still told to fail, failed again at attempt 2).
    wait_for(
        "the replayed attempt",
        lambda: request_json(f"{base_url}/v1/tasks/{task_id}", KEY)[1]["attempts"] == 2,
    )
    assert console.errors == []


def test_the_dead_letters_are_purged_from_the_console(console: Console, base_url: str) -> None:
    _dead_lettered_task(base_url)
    count = len(_dead_letters(base_url))
    console.sign_in(ADMIN)
    console.open("#/operator")
    console.by("dead-letter-row").first.wait_for()
    purge = console.by("purge")
    purge.click()  # arms it
    assert purge.text_content() == "Click again to purge every dead letter"
    assert len(_dead_letters(base_url)) == count
    purge.click()
    console.by("operator-status").get_by_text(f"Purged {count} dead letter(s).").wait_for()
    console.page.get_by_text("No dead letters.").wait_for()
    assert _dead_letters(base_url) == []
    console.shot("dead-letters-purged")


def test_the_operator_view_is_readable_360_px_wide(console: Console, base_url: str) -> None:
    _dead_lettered_task(base_url)
    console.page.set_viewport_size({"width": 360, "height": 740})
    console.sign_in(ADMIN)
    console.open("#/operator")
    console.by("dead-letter-row").first.wait_for()
    assert console.page.evaluate("document.documentElement.scrollWidth") <= 360
    console.shot("operator-360px")
