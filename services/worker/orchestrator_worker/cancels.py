"""Cancellation in a worker: a cancelled task never starts, a running one stops its call.

The API raises a task's cancel flag in the broker (``CANCEL_FLAGS``, see
``Broker.raise_flag``). A worker learns of it in two ways, neither of them a poll per task:

- when it takes a task up, it registers the task here first and then checks the flag: a
  task cancelled while it waited in the queue never calls a provider;
- one watcher per process (``watch``) hears every flag as it is raised, and aborts the task
  of that id if it runs here. After each (re)subscription it checks the flags of every task
  it runs, in one call, for any it may have missed.

The check at take-up costs no round trip in the usual case: the watcher keeps the names it
heard (the newest ``memory`` of them), and a task submitted ``clock_margin`` seconds or more
after the watcher's subscription began (and after the oldest name it forgot) can only have
had its flag raised while the watcher was listening, so if its name was not heard it was
not cancelled. Every other task (one whose name was heard, one submitted earlier, or any
while the watcher is not subscribed) has its flag read from the broker (one ``raised_flags``
call), which has the last word. The margin covers the clocks of the API and the worker
drifting apart (the task's deadline already trusts them to agree), and a flag raised a
moment before the check but heard a moment after it leaves the same window as one raised
just after a broker read: the watcher then aborts the call.

Aborting is cooperative: ``Abort.requested`` is read by the runner before each provider
call, and a call in progress is interrupted (its task cancelled, which closes the HTTP stream
to the provider so that it stops generating and billing) only while the runner is inside the
call. The runner then publishes a terminal ``cancelled`` event with the text answered so far
and acks the delivery: nothing is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time

from orchestrator_broker import SUBSCRIBED, Broker, BrokerError
from orchestrator_tasks import CANCEL_FLAGS

__all__ = ["Abort", "Cancels"]

log = logging.getLogger(__name__)

#: Waits before watching again after the watcher failed or ended while the worker runs.
_RETRY = (0.5, 1.0, 2.0, 5.0)


class Abort:
    """One running task's cancel switch."""

    __slots__ = ("_cancelled_call", "_in_call", "_task", "requested", "task_id")

    def __init__(self, task_id: str, task: asyncio.Task[object] | None) -> None:
        self.task_id = task_id
        self.requested = False
        self._task = task
        self._in_call = False
        self._cancelled_call = False

    def request(self) -> None:
        """Cancel: at the runner's next look, or now if a provider call is in progress."""
        if self.requested:
            return
        self.requested = True
        if self._in_call and self._task is not None:
            self._cancelled_call = True
            self._task.cancel()

    def enter_call(self) -> None:
        self._in_call = True

    def leave_call(self) -> None:
        self._in_call = False

    def took_cancel(self) -> bool:
        """Whether the ``CancelledError`` being handled is this switch's own (and nothing
        else, such as a shutdown, cancelled the task too): then it is taken back, and the
        task goes on to report itself cancelled."""
        if not self._cancelled_call or self._task is None:
            return False
        self._cancelled_call = False
        return self._task.uncancel() == 0


class Cancels:
    """The tasks a worker runs, by id, and the watcher that aborts the cancelled ones."""

    def __init__(self, broker: Broker, *, memory: int = 100_000, clock_margin: float = 2.0) -> None:
        self._broker = broker
        self._running: dict[str, Abort] = {}
        self._memory = memory
        self._margin = clock_margin
        #: The flags heard, oldest first (a dict as an ordered set).
        self._heard: dict[str, None] = {}
        #: The wall-clock time since which every raised flag was heard (and is remembered);
        #: None while the watcher is not subscribed.
        self._since: float | None = None

    def register(self, task_id: str) -> Abort:
        """Take ``task_id`` up: its switch, which the watcher can pull from now on."""
        abort = Abort(task_id, asyncio.current_task())
        self._running[task_id] = abort
        return abort

    def unregister(self, abort: Abort) -> None:
        if self._running.get(abort.task_id) is abort:
            del self._running[abort.task_id]

    async def cancelled(self, task_id: str, submitted_at: float = 0.0) -> bool:
        """Whether ``task_id`` (submitted at ``submitted_at``, epoch seconds) has its cancel
        flag raised: False at once when the watcher heard all flags since before the task and
        not this one, else the broker's answer (``BrokerError`` if it cannot tell)."""
        since = self._since
        heard_all = since is not None and submitted_at - self._margin >= since
        if heard_all and task_id not in self._heard:
            return False
        return bool(await self._broker.raised_flags(CANCEL_FLAGS, (task_id,)))

    @property
    def running(self) -> int:
        return len(self._running)

    async def watch(self, stopping: asyncio.Event) -> None:
        """Abort the tasks whose flags are raised, until ``stopping`` is set or the broker
        closes; a watcher that fails is started again after a short wait."""
        try:
            await self._watch(stopping)
        finally:
            self._since = None  # not listening: every take-up reads its flag

    async def _watch(self, stopping: asyncio.Event) -> None:
        failures = 0
        while not stopping.is_set():
            try:
                async for name in self._broker.watch_flags(CANCEL_FLAGS):
                    if name == SUBSCRIBED:
                        failures = 0
                        self._since = time.time()
                        await self._check_all()
                    else:
                        self._hear(name)
                        self._abort(name)
                    if stopping.is_set():
                        return
                return  # the broker closed
            except BrokerError as exc:
                self._since = None
                wait = _RETRY[min(failures, len(_RETRY) - 1)]
                failures += 1
                log.warning("watching for cancelled tasks failed (%s); again in %g s", exc, wait)
                try:
                    async with asyncio.timeout(wait):
                        await stopping.wait()
                except TimeoutError:
                    pass

    def _hear(self, task_id: str) -> None:
        heard = self._heard
        heard[task_id] = None
        if len(heard) > self._memory:
            del heard[next(iter(heard))]
            # Forgotten: only tasks submitted from now on can be answered from memory.
            self._since = time.time()

    async def _check_all(self) -> None:
        ids = list(self._running)
        if not ids:
            return
        for task_id in await self._broker.raised_flags(CANCEL_FLAGS, ids):
            self._abort(task_id)

    def _abort(self, task_id: str) -> None:
        abort = self._running.get(task_id)
        if abort is not None:
            log.info("task %s: cancelled by its client", task_id)
            abort.request()
