"""Deadlines: asyncio.timeout's behaviour for request awaits, with one shared timer."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator_api.deadlines import Deadlines


async def test_a_block_that_overruns_raises_timeout_error_and_the_task_goes_on() -> None:
    deadlines = Deadlines(resolution=0.01)
    with pytest.raises(TimeoutError), deadlines.bound(0.02):
        await asyncio.Event().wait()
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
    await asyncio.sleep(0)  # no cancellation left pending


async def test_a_block_that_finishes_in_time_is_untouched() -> None:
    deadlines = Deadlines(resolution=0.01)
    with deadlines.bound(5.0):
        await asyncio.sleep(0.03)
    with deadlines.bound(5.0):
        pass
    await asyncio.sleep(0.03)  # sweeps with nothing open stop the timer


async def test_an_outside_cancel_is_still_a_cancel() -> None:
    deadlines = Deadlines(resolution=0.01)
    entered = asyncio.Event()

    async def bounded() -> None:
        with deadlines.bound(5.0):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(bounded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_only_the_late_blocks_time_out() -> None:
    deadlines = Deadlines(resolution=0.01)

    async def wait(bound: float, seconds: float) -> str:
        try:
            with deadlines.bound(bound):
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timeout"
        return "done"

    results = await asyncio.wait_for(
        asyncio.gather(wait(0.02, 10), wait(5.0, 0.05), wait(0.02, 10)), timeout=10
    )
    assert list(results) == ["timeout", "done", "timeout"]


async def test_a_deadline_object_works_on_a_later_event_loop() -> None:
    deadlines = Deadlines(resolution=0.01)

    def in_new_loop() -> None:
        async def late() -> None:
            with deadlines.bound(0.02):
                await asyncio.Event().wait()

        with pytest.raises(TimeoutError):
            asyncio.run(late())

    await asyncio.to_thread(in_new_loop)
    await asyncio.to_thread(in_new_loop)
