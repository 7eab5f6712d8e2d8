"""``TASK_TIMEOUT_SECONDS`` bounds each model call: a call past it fails as ``timeout``, calls
beside it are untouched, and a shutdown's cancellation is not mistaken for a timeout (the
hand-back on cancellation is in ``test_worker``)."""

from __future__ import annotations

from orchestrator_broker import MemoryBroker
from orchestrator_tasks.messages import EventKind
from tests.worker.support import collect, kinds, submit

OK, FAIL = EventKind.SUCCEEDED, EventKind.FAILED


async def test_slow_calls_time_out_while_the_calls_beside_them_finish(
    broker: MemoryBroker, worker_factory
) -> None:
    slow = await submit(broker, parameters={"latency_ms": 60_000})
    fast = await submit(broker, "in time")
    later = await submit(broker, parameters={"latency_ms": 60_000})
    # (started_after past the timeout: a "started" event racing the timeout on a loaded
    # machine is not what this test is about)
    await worker_factory(broker, task_timeout=1.0, max_attempts=1, started_after=5.0)

    events = await collect(broker, 3)

    assert kinds(events[fast.task_id]) == [OK]
    assert events[fast.task_id][-1].text == "in time"
    for task in (slow, later):
        (failed,) = events[task.task_id]
        assert failed.kind is FAIL
        assert failed.error is not None
        assert failed.error.type == "timeout"
        assert failed.error.message.endswith("no answer within 1 s")


async def test_a_timed_out_task_goes_on_to_its_next_attempt(
    broker: MemoryBroker, worker_factory
) -> None:
    # The timeout leaves the handler uncancelled: it publishes, then hands the task back.
    task = await submit(broker, parameters={"latency_ms": 60_000})
    await worker_factory(broker, task_timeout=0.2, max_attempts=2, retry_base=0.0)

    events = (await collect(broker, 1))[task.task_id]

    assert [(event.kind, event.attempt) for event in events][-1] == (FAIL, 2)
    assert events[-1].error is not None
    assert events[-1].error.type == "timeout"
    assert "gave up after 2 attempt(s)" in events[-1].error.message
