"""What ``ai-orchestrator api|worker|run`` start, once the environment is merged.

Each command imports only the service it runs: ``api`` never loads the worker (nor its
provider clients), ``worker`` never loads the API; ``run`` composes both
(``single_process``), on the event loop ``EVENT_LOOP`` names (``orchestrator_settings.loop``).
Configuration errors surface as ``UsageError`` so the CLI prints one
line naming the variable and exits non-zero.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from orchestrator_broker import BrokerError
from orchestrator_settings import ConfigError
from orchestrator_settings.loop import run

if TYPE_CHECKING:
    from orchestrator_api import ApiSettings
    from orchestrator_worker import WorkerSettings

__all__ = ["UsageError", "api_settings", "launch", "worker_settings"]


class UsageError(Exception):
    """A configuration the CLI refuses: printed as one line, exit status 2."""


def launch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the ``api``, ``worker`` or ``run`` command until a signal stops it."""
    try:
        if args.command == "api":
            _serve_api(args, environ)
        elif args.command == "worker":
            _serve_worker(args, environ)
        elif args.command == "run":
            from .single_process import run_single_process

            run(run_single_process(args, environ), environ)
        else:  # argparse only lets the known commands through
            raise UsageError(f"unknown command {args.command!r}")
    except (ConfigError, BrokerError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def _serve_api(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    from orchestrator_api import service

    settings = api_settings(environ, host=args.host, port=args.port)
    run(service.serve(settings, environ=environ), environ)


def _serve_worker(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    from orchestrator_worker import service

    settings = worker_settings(environ, concurrency=args.concurrency)
    run(service.serve(settings), environ)


def api_settings(environ: Mapping[str, str], *, host: str | None, port: int | None) -> ApiSettings:
    """The API's settings from ``environ``, with ``--host``/``--port`` over them."""
    from orchestrator_api import ApiSettings

    settings = ApiSettings.from_env(environ)
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")
    return attrs.evolve(
        settings,
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
    )


def worker_settings(environ: Mapping[str, str], *, concurrency: int | None) -> WorkerSettings:
    """The worker's settings from ``environ``, with ``--concurrency`` over them."""
    from orchestrator_worker import WorkerSettings

    settings = WorkerSettings.from_env(environ)
    if concurrency is not None:
        if concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
        settings = attrs.evolve(settings, concurrency=concurrency)
    return settings
