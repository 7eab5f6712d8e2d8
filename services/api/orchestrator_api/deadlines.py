"""Time bounds for the awaits of a request, with one coarse timer for all of them.

``asyncio.timeout`` arms and cancels a timer per use (a heap push, a cancelled handle left in
the heap, and a few Python frames): two per ``POST /v1/tasks`` were ~8% of the API's CPU.
Here every bounded block only records its task and deadline in a dict; one timer, running
only while some block is open, sweeps every ``resolution`` seconds and cancels the tasks whose
deadline has passed. The block then raises ``TimeoutError`` exactly as ``asyncio.timeout``
does (same ``uncancel`` bookkeeping, so an outside cancellation still propagates as
``CancelledError``); a deadline may be overrun by up to ``resolution``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final

__all__ = ["DEFAULT_RESOLUTION", "Deadlines"]

#: How late a bound may fire, at most (seconds).
DEFAULT_RESOLUTION: Final = 0.05


class Deadlines:
    """Hands out ``bound(seconds)`` blocks; one per event loop's worth of requests."""

    def __init__(self, resolution: float = DEFAULT_RESOLUTION) -> None:
        self._resolution = resolution
        self._open: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the timer runs on

    def bound(self, seconds: float) -> _Bound:
        """``with deadlines.bound(2.0): await ...``: TimeoutError if the block takes longer.

        Used from inside a task, around awaits; blocks of one task must not nest. The object
        may be entered again by the same task (each time with a fresh deadline).
        """
        return _Bound(self, seconds)

    def _sweep(self) -> None:
        self._timer = None
        if not self._open:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = [task for task, deadline in self._open.items() if deadline <= now]
        for task in late:
            if task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._timer = loop.call_later(self._resolution, self._sweep)


class _Bound:
    __slots__ = ("_cancelling", "_owner", "_seconds", "_task")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None

    def __enter__(self) -> None:
        task = self._task
        if task is None:
            task = self._task = asyncio.current_task()
            if task is None:
                raise RuntimeError("Deadlines.bound() must be used inside a task")
        owner = self._owner
        loop = task.get_loop()
        self._cancelling = task.cancelling()
        owner._open[task] = loop.time() + self._seconds
        if owner._timer is None or owner._loop is not loop:
            owner._loop = loop
            owner._timer = loop.call_later(owner._resolution, owner._sweep)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        owner, task = self._owner, self._task
        assert task is not None  # entered
        del owner._open[task]
        if task in owner._expired:
            owner._expired.discard(task)
            if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
