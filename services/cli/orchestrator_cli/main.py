"""The ``ai-orchestrator`` command: run the services, or talk to a running API.

Parsing the command line loads neither service: ``launch`` imports the one a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from .envfile import EnvFileError, parse_env_file


class UsageError(Exception):
    """Bad command-line input or configuration: printed as one line, exit status 2."""


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"ai-orchestrator: {message}", file=sys.stderr)
    raise SystemExit(code)


def _environment(env_files: Sequence[Path]) -> dict[str, str]:
    """The process environment over the ``--env-file`` values (real variables win)."""
    merged: dict[str, str] = {}
    for path in env_files:
        try:
            merged.update(parse_env_file(path))
        except FileNotFoundError:
            raise UsageError(f"--env-file {path}: no such file") from None
        except EnvFileError as exc:
            raise UsageError(str(exc)) from None
    merged.update(os.environ)
    return merged


def _parse_param(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise UsageError(f"--param expects NAME=VALUE, got {text!r}")
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return name, value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h``, ``7d`` or ``1w`` (argparse's type)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 7d)")
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, at least 1: {text!r}")
    return int(text)


def _env_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="read NAME=value settings from FILE (repeatable; real variables win)",
    )


def _add_dead_letters(commands: Any) -> None:
    about = (
        "Inspect, replay or purge the dead letters on the Redis of REDIS_URI (and "
        "REDIS_STREAM_ID, REDIS_RESULTS_STREAM_ID, CACHE_TTL_MINUTES, as for the services)."
    )
    dead = commands.add_parser("dead-letters", help=about, description=about)
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    streams = ("tasks", "results")

    listing = actions.add_parser("list", help="Print the dead letters, oldest first, one per line.")
    listing.add_argument("--stream", choices=streams, default="tasks", help="default: tasks")
    listing.add_argument(
        "--limit", type=_positive, default=100, metavar="N", help="at most N (default 100)"
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help="JSON lines: entry_id, task_id, tenant, reason, delivery_count, dead_at",
    )
    _env_file_option(listing)

    replaying = actions.add_parser(
        "replay",
        help="Run dead-lettered tasks again under their own ids.",
        description="Put each task back to queued (its attempts count on) and publish it "
        "again; its dead letter is removed only once it is published.",
    )
    chosen = replaying.add_mutually_exclusive_group(required=True)
    chosen.add_argument("task_ids", nargs="*", default=[], metavar="TASK_ID", help="tasks")
    chosen.add_argument("--all", action="store_true", help="every dead-lettered task")
    _env_file_option(replaying)

    purging = actions.add_parser("purge", help="Delete dead letters.")
    purging.add_argument("--stream", choices=streams, default="tasks", help="default: tasks")
    purging.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="DURATION",
        help="only those dead-lettered longer ago than this (90s, 15m, 2h, 7d); default: all",
    )
    _env_file_option(purging)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai-orchestrator",
        description="Run AI prompts as asynchronous tasks: the API, the workers, or both.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def service(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _env_file_option(sub)
        return sub

    api = service("api", "Run the HTTP API service (settings from the environment).")
    api.add_argument("--host", help="address to bind (default: HOST or 0.0.0.0)")
    api.add_argument("--port", type=int, help="port to listen on (default: PORT or 8080)")

    worker = service("worker", "Run a worker process (settings from the environment).")
    worker.add_argument(
        "--concurrency", type=int, metavar="N", help="tasks at once (default: NUMBER_OF_WORKERS)"
    )

    run = service(
        "run",
        "Run the API and workers in one process, on the in-memory broker and store "
        "(on Redis when REDIS_URI is set). Binds 127.0.0.1 by default.",
    )
    run.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to listen on (default: PORT or 8080)")
    run.add_argument(
        "--concurrency", type=int, metavar="N", help="tasks at once (default: NUMBER_OF_WORKERS)"
    )

    submit = commands.add_parser(
        "submit",
        help="Submit a prompt to a running API.",
        description="Submit a prompt to a running API and print the task, or its answer.",
    )
    submit.add_argument(
        "prompt", nargs="?", help="the prompt text ('-' reads standard input); or --message"
    )
    submit.add_argument(
        "--message",
        action="append",
        default=[],
        metavar="ROLE:TEXT",
        help="a turn of a conversation, ROLE one of system, user, assistant (repeatable, in "
        "order; instead of PROMPT and --system)",
    )
    submit.add_argument("--model", help="model name, e.g. echo or openai/gpt-4o-mini")
    submit.add_argument("--system", help="system instruction")
    submit.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a model parameter (VALUE parsed as JSON when it is JSON), repeatable",
    )
    mode = submit.add_mutually_exclusive_group()
    mode.add_argument("--wait", action="store_true", help="wait for the answer and print it")
    mode.add_argument("--stream", action="store_true", help="print the answer as it streams")
    submit.add_argument(
        "--url",
        default=os.environ.get("ORCHESTRATOR_URL", "http://127.0.0.1:8080"),
        help="the API's base URL (default: ORCHESTRATOR_URL or http://127.0.0.1:8080)",
    )
    submit.add_argument(
        "--api-key",
        default=os.environ.get("ORCHESTRATOR_API_KEY"),
        help="bearer key (default: ORCHESTRATOR_API_KEY)",
    )
    submit.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait with --wait/--stream"
    )
    submit.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="retries of a request the API cannot take right now (503, 409, 429, a lost "
        "connection), waiting Retry-After; the submission's Idempotency-Key makes them safe "
        "(default: 5)",
    )
    _add_dead_letters(commands)
    _add_batch(commands)
    return parser


def _add_batch(commands: Any) -> None:
    about = "Run a JSONL file of chat completion requests as a batch (the OpenAI Batch API)."
    batch = commands.add_parser("batch", help=about, description=about)
    actions = batch.add_subparsers(dest="action", required=True, metavar="ACTION")
    submit = actions.add_parser(
        "submit", help="Upload FILE, start its batch, print the batch id (and follow it)."
    )
    submit.add_argument("file", type=Path, help="JSONL: one /v1/chat/completions request a line")
    submit.add_argument(
        "--wait", action="store_true", help="follow the batch to its end (a progress bar)"
    )
    submit.add_argument("--output", type=Path, help="with --wait: write the output file here")
    submit.add_argument("--errors", type=Path, help="with --wait: write the error file here")
    submit.add_argument(
        "--url",
        default=os.environ.get("ORCHESTRATOR_URL", "http://127.0.0.1:8080"),
        help="the API's base URL (default: ORCHESTRATOR_URL or http://127.0.0.1:8080)",
    )
    submit.add_argument(
        "--api-key",
        default=os.environ.get("ORCHESTRATOR_API_KEY"),
        help="bearer key (default: ORCHESTRATOR_API_KEY)",
    )


def _run_batch(args: argparse.Namespace) -> int:
    from .batch import BatchError, submit_batch

    if (args.output or args.errors) and not args.wait:
        raise UsageError("--output and --errors need --wait")
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    try:
        return asyncio.run(
            submit_batch(
                args.url,
                args.api_key,
                args.file,
                wait=args.wait,
                output=args.output,
                errors=args.errors,
                out=sys.stdout,
                progress=sys.stderr,
            )
        )
    except BatchError as exc:
        _fail(str(exc), code=1)


#: The roles ``--message`` takes (the API's ``messages[].role``).
_ROLES = ("system", "user", "assistant")


def _parse_message(text: str) -> dict[str, str]:
    role, sep, content = text.partition(":")
    if not sep or role not in _ROLES:
        raise UsageError(f"--message expects ROLE:TEXT with ROLE one of {', '.join(_ROLES)}")
    return {"role": role, "content": content}


def _conversation(args: argparse.Namespace) -> dict[str, Any]:
    """The request's ``messages``, or its ``prompt``/``system`` shorthand."""
    if args.message:
        if args.prompt is not None or args.system:
            raise UsageError("give either PROMPT (and --system) or --message, not both")
        return {"messages": [_parse_message(m) for m in args.message]}
    if args.prompt is None:
        raise UsageError("submit needs a PROMPT or at least one --message ROLE:TEXT")
    body: dict[str, Any] = {"prompt": sys.stdin.read() if args.prompt == "-" else args.prompt}
    if args.system:
        body["system"] = args.system
    return body


def _run_submit(args: argparse.Namespace) -> int:
    from .client import ClientError, submit

    body: dict[str, Any] = _conversation(args)
    if args.model:
        body["model"] = args.model
    if args.param:
        body["parameters"] = dict(_parse_param(p) for p in args.param)
    mode = "wait" if args.wait else "stream" if args.stream else "submit"
    try:
        return asyncio.run(
            submit(
                args.url,
                args.api_key,
                body,
                mode=mode,
                timeout=args.timeout,
                tries=max(args.retries, 0) + 1,
            )
        )
    except ClientError as exc:
        _fail(str(exc), code=1)


def _run_dead_letters(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from orchestrator_settings import ConfigError

    from .dead_letters import DeadLetterError, run

    if args.action == "replay" and not args.all and not args.task_ids:
        raise UsageError("dead-letters replay needs TASK_ID... or --all")
    try:
        return asyncio.run(run(args, environ, sys.stdout))
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except DeadLetterError as exc:
        _fail(str(exc), code=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "submit":
            return _run_submit(args)
        if args.command == "batch":
            return _run_batch(args)
        environ = _environment(args.env_file)
        if args.command == "dead-letters":
            return _run_dead_letters(args, environ)
        from .launch import UsageError as LaunchError
        from .launch import launch

        try:
            return launch(args, environ)
        except LaunchError as exc:
            raise UsageError(str(exc)) from None
    except UsageError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
