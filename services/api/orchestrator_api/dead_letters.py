"""Dead letters of the tasks stream: list, replay and purge, shared by the operator endpoints
(``/v1/admin/dead-letters``, ``admin.py``) and the CLI (``ai-orchestrator dead-letters``).

``replay`` sends a dead-lettered task round again under its own id, in three steps, each
safe to repeat:

1. the API's record goes back to ``queued`` (``TaskStore.requeue``, so it is recreated if it
   has expired): clients following the task see it queued, then running again, and its
   attempt count is kept;
2. the task's original message is published again on the tasks stream, with that count as
   ``prior_attempts``: the worker numbers the new attempts on from there (so the API takes
   their events) with a fresh retry budget, and its headers still carry the trace context of
   the submission (the new attempts join the task's trace); its ``submitted_at`` is the
   replay's time, so that its deadline (``TASK_DEADLINE_SECONDS``) counts from there;
3. only then is the dead letter removed (with any older one of the same task: it runs once).

A failure stops the replay there (``DeadLetterError``): whatever was not published keeps its
dead letter (replay again); a task published whose dead letter could not be removed may run
twice if replayed again (the last run is the one its record shows).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from orchestrator_broker import Broker, BrokerError, DeadLetter, Message, dead_letter_stream
from orchestrator_tasks import InvalidTask, TaskMessage, decode_task, encode_task

from .model import TaskRecord, TaskStatus
from .store.errors import StoreError
from .store.protocol import TaskStore

__all__ = [
    "MAX_SCAN",
    "PAGE",
    "DeadLetterError",
    "all_dead_letters",
    "describe",
    "one_line",
    "purge",
    "replay",
]

#: Dead letters read per round trip.
PAGE: Final = 1000
#: Most dead letters a replay looks through (a bound; DEAD_LETTER_MAXLEN keeps 10,000).
MAX_SCAN: Final = 1_000_000

_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")


class DeadLetterError(Exception):
    """A replay could not do (all of) its work; the message says what, in one line."""


def _payload_field(dead: DeadLetter, name: str) -> str | None:
    payload = dead.message.payload if dead.message is not None else None
    value = payload.get(name) if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def describe(dead: DeadLetter) -> dict[str, Any]:
    """One dead letter as ``list --json`` prints it and ``GET /v1/admin/dead-letters`` lists
    it (task_id and tenant null when the entry is not one of ours)."""
    return {
        "entry_id": dead.entry_id,
        "task_id": _payload_field(dead, "task_id"),
        "tenant": _payload_field(dead, "tenant"),
        "reason": dead.reason,
        "delivery_count": dead.delivery_count,
        "dead_at": datetime.fromtimestamp(dead.dead_at, UTC),
    }


async def all_dead_letters(broker: Broker, stream: str) -> list[DeadLetter]:
    """Every dead letter of ``stream``, oldest first (``DeadLetterError`` past ``MAX_SCAN``)."""
    found: list[DeadLetter] = []
    after = None
    while len(found) < MAX_SCAN:
        page = await broker.dead_letters(stream, PAGE, after)
        found += page
        if len(page) < PAGE:
            return found
        after = page[-1].entry_id
    raise DeadLetterError(
        f"more than {MAX_SCAN} dead letters on {dead_letter_stream(stream)}: purge some first"
    )


def _task_of(dead: DeadLetter) -> TaskMessage | None:
    if dead.message is None:
        return None
    try:
        return decode_task(dead.message.payload)
    except InvalidTask:
        return None


def _trace_id(message: Message) -> str | None:
    """The trace id in ``message``'s W3C ``traceparent`` header, if it has a valid one."""
    parts = message.headers.get("traceparent", "").split("-")
    if len(parts) == 4 and _TRACE_ID.fullmatch(parts[1]) and set(parts[1]) != {"0"}:
        return parts[1]
    return None


@attrs.frozen
class _Replay:
    task: TaskMessage
    message: Message
    letters: tuple[DeadLetter, ...]  # oldest first; the newest is replayed

    @property
    def newest(self) -> DeadLetter:
        return self.letters[-1]


async def _chosen(broker: Broker, stream: str, task_ids: Sequence[str] | None) -> list[_Replay]:
    """What to replay: the tasks named (all when None), each with its dead letters. Refuses
    (replaying nothing) when a named task has none, or its newest one is not a task."""
    by_task: dict[str, list[tuple[DeadLetter, TaskMessage]]] = {}
    strays: list[DeadLetter] = []
    for dead in await all_dead_letters(broker, stream):
        task = _task_of(dead)
        if task is None:
            strays.append(dead)
        else:
            by_task.setdefault(task.task_id, []).append((dead, task))
    dead_stream = dead_letter_stream(stream)
    if task_ids is None:
        if strays:
            entries = ", ".join(d.entry_id for d in strays[:5])
            more = f" and {len(strays) - 5} more" if len(strays) > 5 else ""
            raise DeadLetterError(
                f"{len(strays)} dead letter(s) on {dead_stream} are not tasks and cannot be "
                f"replayed ({entries}{more}); nothing was replayed: purge them, or replay "
                "the tasks by id"
            )
        wanted = list(by_task)
    else:
        wanted = list(dict.fromkeys(task_ids))
        missing = [task_id for task_id in wanted if task_id not in by_task]
        if missing:
            raise DeadLetterError(
                f"no dead letter of task(s) {', '.join(missing)} on {dead_stream}; "
                "nothing was replayed"
            )
    chosen = []
    for task_id in wanted:
        letters = by_task[task_id]
        newest, task = letters[-1]
        assert newest.message is not None  # it decoded as a task
        chosen.append(_Replay(task, newest.message, tuple(dead for dead, _ in letters)))
    return chosen


async def _replay_one(broker: Broker, store: TaskStore, stream: str, item: _Replay) -> int:
    task, message, dead = item.task, item.message, item.newest
    record = TaskRecord(
        id=task.task_id,
        tenant=task.tenant,
        status=TaskStatus.QUEUED,
        created_at=task.submitted_at or message.created_at,
        model=task.model,
        trace_id=_trace_id(message),
    )
    try:
        attempts = await store.requeue(record, task.prior_attempts + dead.delivery_count)
    except ValueError as exc:  # another tenant's task id: a forged or foreign dead letter
        raise DeadLetterError(f"task {task.task_id}: {exc}; not replayed") from exc
    replayed = Message(
        # Its deadline (TASK_DEADLINE_SECONDS) counts from the replay, not the submission.
        payload=encode_task(attrs.evolve(task, prior_attempts=attempts, submitted_at=time.time())),
        id=message.id,
        headers=message.headers,
        created_at=message.created_at,
    )
    await broker.publish(stream, replayed)
    for letter in item.letters:
        await broker.remove_dead_letter(stream, letter.entry_id)
    return attempts


async def replay(
    broker: Broker,
    store: TaskStore,
    stream: str,
    task_ids: Sequence[str] | None,
    on_replayed: Callable[[str, int], object] | None = None,
) -> int:
    """Replay the dead letters of ``task_ids`` (every task's when None) on ``stream``,
    calling ``on_replayed(task_id, attempts_so_far)`` after each; how many were."""
    done = 0
    for item in await _chosen(broker, stream, task_ids):
        try:
            attempts = await _replay_one(broker, store, stream, item)
        except (BrokerError, StoreError) as exc:
            raise DeadLetterError(
                f"replay stopped at task {item.task.task_id} ({done} replayed before it): "
                f"{one_line(exc)}; run it again for the rest"
            ) from exc
        done += 1
        if on_replayed is not None:
            on_replayed(item.task.task_id, attempts)
    return done


async def purge(broker: Broker, stream: str, older_than: float | None) -> int:
    """Delete the dead letters of ``stream`` (those older than ``older_than`` seconds)."""
    return await broker.purge_dead_letters(stream, older_than)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (its class name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__
