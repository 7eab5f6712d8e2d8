"""One timer for the model-call timeouts of every task of a worker.

``asyncio.timeout()`` arms a timer handle per call (a heap push, then a cancellation that
leaves a dead handle in the event loop's heap until it is swept): per task, at thousands of
tasks a second. Every model call of a worker has the same limit (``TASK_TIMEOUT_SECONDS``),
so deadlines fall due in the order they were set: they wait in a first-in-first-out queue,
and a single timer, armed for the oldest one, cancels the tasks whose time is up.

A deadline behaves like ``asyncio.timeout(seconds)`` around its block: on expiry the task is
cancelled, and the ``CancelledError`` leaving the block becomes ``TimeoutError``, unless
someone else cancelled the task too (that cancellation then propagates).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

__all__ = ["Deadlines"]

#: Finished deadlines tolerated in the queue before it is compacted (they are otherwise
#: dropped only when their time comes).
_COMPACT_AFTER = 1024


class _Deadline:
    """One block under a deadline: a context manager, entered once."""

    __slots__ = ("_cancelling", "_expired", "_owner", "_task", "done", "when")

    def __init__(self, owner: Deadlines) -> None:
        self._owner = owner
        self.done = False
        self._expired = False
        self.when = 0.0  # loop time it expires at (set on entering)
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    def __enter__(self) -> _Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline is used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._owner._add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        self._task = None  # finished deadlines may wait in the queue: keep no task alive
        if not self.done:
            self.done = True
            self._owner._finished()
        if (
            self._expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _expire(self) -> None:
        self.done = True
        self._expired = True
        if self._task is not None:
            self._task.cancel()


class Deadlines:
    """Hands out deadlines of ``seconds`` from now: ``with deadlines.start(): ...``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._queue: deque[_Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._done = 0  # finished deadlines still in the queue

    def start(self) -> _Deadline:
        """A deadline ``seconds`` from when the block is entered."""
        return _Deadline(self)

    def __len__(self) -> int:
        """Deadlines waiting (finished ones included until swept)."""
        return len(self._queue)

    def _add(self, deadline: _Deadline) -> None:
        loop = asyncio.get_running_loop()
        deadline.when = loop.time() + self.seconds
        self._queue.append(deadline)
        if self._timer is None:
            self._timer = loop.call_at(deadline.when, self._fire)

    def _finished(self) -> None:
        self._done += 1
        queue = self._queue
        if self._done > _COMPACT_AFTER and self._done * 2 > len(queue):
            self._queue = deque(d for d in queue if not d.done)
            self._done = 0
            if not self._queue and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue
        while queue and (queue[0].done or queue[0].when <= now):
            deadline = queue.popleft()
            if deadline.done:
                self._done -= 1
            else:
                deadline._expire()
        if queue:
            self._timer = loop.call_at(queue[0].when, self._fire)
