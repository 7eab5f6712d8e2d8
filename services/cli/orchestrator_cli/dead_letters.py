"""``ai-orchestrator dead-letters list|replay|purge``: the dead letters of a deployment, on
the Redis that ``REDIS_URI`` names (as for the services).

``replay`` sends a dead-lettered task round again under its own id, in three steps, each
safe to repeat:

1. the API's record goes back to ``queued`` (``TaskStore.requeue``, written with the API's
   own store module, so it is recreated if it has expired): clients following the task see
   it queued, then running again, and its attempt count is kept;
2. the task's original message is published again on the tasks stream, with that count as
   ``prior_attempts``: the worker numbers the new attempts on from there (so the API takes
   their events) with a fresh retry budget, and its headers still carry the trace context of
   the submission (the new attempts join the task's trace); its ``submitted_at`` is the
   replay's time, so that its deadline (``TASK_DEADLINE_SECONDS``) counts from there;
3. only then is the dead letter removed (with any older one of the same task: it runs once).

A failure stops the replay there with one line: whatever was not published keeps its dead
letter (run the command again); a task published whose dead letter could not be removed may
run twice if replayed again (the last run is the one its record shows).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import attrs
import orjson

from orchestrator_api import ApiSettings, build_broker, build_store
from orchestrator_api.model import TaskRecord, TaskStatus
from orchestrator_api.store import StoreError, TaskStore
from orchestrator_broker import Broker, BrokerError, DeadLetter, Message, dead_letter_stream
from orchestrator_settings import ConfigError, Env
from orchestrator_tasks import (
    RESULTS_STREAM,
    TASKS_STREAM,
    InvalidTask,
    TaskMessage,
    decode_task,
    encode_task,
)

__all__ = [
    "DeadLetterError",
    "DeadLetterSettings",
    "describe",
    "list_dead_letters",
    "purge",
    "replay",
    "run",
]

#: Dead letters read per round trip.
PAGE: Final = 1000
#: Most dead letters a replay looks through (a bound; DEAD_LETTER_MAXLEN keeps 10,000).
MAX_SCAN: Final = 1_000_000

_NO_SPACE: Final = re.compile(r"\S+")
_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")


class DeadLetterError(Exception):
    """The command could not do (all of) its work; the message says what, in one line."""


@attrs.frozen
class DeadLetterSettings:
    """What the command reads from the environment: the services' own variables."""

    redis_uri: str
    stream: str = TASKS_STREAM
    results_stream: str = RESULTS_STREAM
    cache_ttl_minutes: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DeadLetterSettings:
        env = Env(environ)
        uri = env.text("REDIS_URI", None)
        if uri is None:
            raise ConfigError(
                "REDIS_URI",
                "dead-letters needs the deployment's Redis (the in-memory broker of "
                "single-process mode keeps nothing once it stops)",
            )
        return cls(
            redis_uri=uri,
            stream=_name(env, "REDIS_STREAM_ID", TASKS_STREAM),
            results_stream=_name(env, "REDIS_RESULTS_STREAM_ID", RESULTS_STREAM),
            cache_ttl_minutes=env.number("CACHE_TTL_MINUTES", 5.0, low=0.0, positive=True),
        )

    def api_settings(self) -> ApiSettings:
        """The API's settings for the same broker and store (built as the API builds them)."""
        return ApiSettings(
            redis_uri=self.redis_uri,
            stream=self.stream,
            results_stream=self.results_stream,
            cache_ttl_minutes=self.cache_ttl_minutes,
        )

    def stream_of(self, which: str) -> str:
        """The stream name of ``tasks`` or ``results``."""
        return self.stream if which == "tasks" else self.results_stream


def _name(env: Env, name: str, default: str) -> str:
    return env.text(name, default, pattern=_NO_SPACE, expected="must not contain whitespace")


def _payload_field(dead: DeadLetter, name: str) -> str | None:
    payload = dead.message.payload if dead.message is not None else None
    value = payload.get(name) if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def describe(dead: DeadLetter) -> dict[str, Any]:
    """One dead letter as ``list --json`` prints it (task_id and tenant null when the entry
    is not one of ours)."""
    return {
        "entry_id": dead.entry_id,
        "task_id": _payload_field(dead, "task_id"),
        "tenant": _payload_field(dead, "tenant"),
        "reason": dead.reason,
        "delivery_count": dead.delivery_count,
        "dead_at": datetime.fromtimestamp(dead.dead_at, UTC),
    }


def _line(dead: DeadLetter) -> str:
    shown = describe(dead)
    return "  ".join(
        [
            shown["entry_id"],
            shown["dead_at"].isoformat(timespec="seconds"),
            shown["task_id"] or "-",
            shown["tenant"] or "-",
            f"deliveries={shown['delivery_count']}",
            shown["reason"],
        ]
    )


async def list_dead_letters(
    broker: Broker, stream: str, limit: int, out: TextIO, *, as_json: bool = False
) -> int:
    """Print the oldest ``limit`` dead letters of ``stream``, one line each; how many."""
    printed, after = 0, None
    while printed < limit:
        page = await broker.dead_letters(stream, min(PAGE, limit - printed), after)
        for dead in page:
            if as_json:
                out.write(orjson.dumps(describe(dead)).decode() + "\n")
            else:
                out.write(_line(dead) + "\n")
        printed += len(page)
        if not page:
            break
        after = page[-1].entry_id
    return printed


async def _all_dead_letters(broker: Broker, stream: str) -> list[DeadLetter]:
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
    for dead in await _all_dead_letters(broker, stream):
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
    out: TextIO,
) -> int:
    """Replay the dead letters of ``task_ids`` (every task's when None) on ``stream``,
    printing one line per task replayed; how many were."""
    done = 0
    for item in await _chosen(broker, stream, task_ids):
        try:
            attempts = await _replay_one(broker, store, stream, item)
        except (BrokerError, StoreError) as exc:
            raise DeadLetterError(
                f"replay stopped at task {item.task.task_id} ({done} replayed before it): "
                f"{_one_line(exc)}; run it again for the rest"
            ) from exc
        done += 1
        out.write(f"replayed {item.task.task_id} (attempts so far: {attempts})\n")
    return done


async def purge(broker: Broker, stream: str, older_than: float | None) -> int:
    """Delete the dead letters of ``stream`` (those older than ``older_than`` seconds)."""
    return await broker.purge_dead_letters(stream, older_than)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def run(args: Any, environ: Mapping[str, str], out: TextIO) -> int:
    """Run one ``dead-letters`` command (``args`` from the CLI's parser)."""
    settings = DeadLetterSettings.from_env(environ)
    api = settings.api_settings()
    try:
        broker = build_broker(api)
    except ValueError as exc:
        raise ConfigError("REDIS_URI", str(exc)) from exc
    store: TaskStore | None = None
    try:
        if args.action == "list":
            stream = settings.stream_of(args.stream)
            await list_dead_letters(broker, stream, args.limit, out, as_json=args.json)
        elif args.action == "replay":
            store = build_store(api)
            chosen = None if args.all else args.task_ids
            if not await replay(broker, store, settings.stream, chosen, out):
                out.write(f"no dead-lettered task on {dead_letter_stream(settings.stream)}\n")
        else:
            stream = settings.stream_of(args.stream)
            count = await purge(broker, stream, args.older_than)
            out.write(f"purged {count} dead letter(s) from {dead_letter_stream(stream)}\n")
    except (BrokerError, StoreError) as exc:
        raise DeadLetterError(f"{_one_line(exc)}") from exc
    finally:
        closing = [broker.close()] + ([store.close()] if store is not None else [])
        await asyncio.gather(*closing, return_exceptions=True)
    return 0
