"""The ``ai-orchestrator`` command: run the services, or talk to a running API.

Parsing the command line loads neither service: ``launch`` imports the one a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai-orchestrator",
        description="Run AI prompts as asynchronous tasks: the API, the workers, or both.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def service(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--env-file",
            type=Path,
            action="append",
            default=[],
            metavar="FILE",
            help="read NAME=value settings from FILE (repeatable; real variables win)",
        )
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
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "submit":
            return _run_submit(args)
        environ = _environment(args.env_file)
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
