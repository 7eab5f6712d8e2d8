"""The shared deadline queue behaves like ``asyncio.timeout`` around a model call."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator_worker.deadlines import Deadlines


async def test_a_block_past_its_deadline_raises_timeout_error() -> None:
    deadlines = Deadlines(0.05)
    with pytest.raises(TimeoutError), deadlines.start():
        await asyncio.sleep(5)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_block_in_time_is_untouched_and_later_ones_still_expire() -> None:
    deadlines = Deadlines(0.1)
    with deadlines.start():
        await asyncio.sleep(0)

    async def slow() -> str:
        try:
            with deadlines.start():
                await asyncio.sleep(5)
        except TimeoutError:
            return "timed out"
        return "finished"

    async def fast() -> str:
        with deadlines.start():
            await asyncio.sleep(0.01)
        return "finished"

    results = await asyncio.wait_for(asyncio.gather(slow(), fast(), slow()), timeout=5)
    assert list(results) == ["timed out", "finished", "timed out"]
    assert len(deadlines) == 0


async def test_an_outside_cancellation_propagates_as_cancellation() -> None:
    deadlines = Deadlines(0.05)

    async def run() -> None:
        with deadlines.start():
            await asyncio.sleep(5)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_finished_deadlines_are_swept_before_their_time() -> None:
    deadlines = Deadlines(60)
    for _ in range(3000):
        with deadlines.start():
            pass
    assert len(deadlines) < 2000
