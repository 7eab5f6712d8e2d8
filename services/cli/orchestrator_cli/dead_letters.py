"""``ai-orchestrator dead-letters list|replay|purge``: the dead letters of a deployment, on
the Redis that ``REDIS_URI`` names (as for the services).

``replay`` sends a dead-lettered task round again under its own id; the steps, each safe to
repeat, are the API's (``orchestrator_api.dead_letters``, shared with the operator endpoints
``/v1/admin/dead-letters``). A failure stops the replay there with one line: run the command
again for the rest.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO

import attrs
import orjson

from orchestrator_api import ApiSettings, build_broker, build_store
from orchestrator_api.dead_letters import (
    MAX_SCAN,
    PAGE,
    DeadLetterError,
    describe,
    one_line,
    purge,
)
from orchestrator_api.dead_letters import replay as _replay
from orchestrator_api.store import StoreError, TaskStore
from orchestrator_broker import Broker, BrokerError, DeadLetter, dead_letter_stream
from orchestrator_settings import ConfigError, Env
from orchestrator_tasks import RESULTS_STREAM, TASKS_STREAM

__all__ = [
    "MAX_SCAN",
    "PAGE",
    "DeadLetterError",
    "DeadLetterSettings",
    "describe",
    "list_dead_letters",
    "purge",
    "replay",
    "run",
]

_NO_SPACE: Final = re.compile(r"\S+")


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


async def replay(
    broker: Broker,
    store: TaskStore,
    stream: str,
    task_ids: Sequence[str] | None,
    out: TextIO,
) -> int:
    """Replay the dead letters of ``task_ids`` (every task's when None) on ``stream``,
    printing one line per task replayed; how many were."""

    def replayed(task_id: str, attempts: int) -> None:
        out.write(f"replayed {task_id} (attempts so far: {attempts})\n")

    return await _replay(broker, store, stream, task_ids, replayed)


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
        raise DeadLetterError(f"{one_line(exc)}") from exc
    finally:
        closing = [broker.close()] + ([store.close()] if store is not None else [])
        await asyncio.gather(*closing, return_exceptions=True)
    return 0
