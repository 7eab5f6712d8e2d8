#!/usr/bin/env python3
"""The image's HEALTHCHECK: one script for both services, standard library only.

Which service runs is read from the main process's command line (PID 1 in a container;
``HEALTHCHECK_PID`` names another process, for a check run outside a container):

- ``ai-orchestrator api``: ``GET /health`` on ``--port`` or ``PORT`` (8080) must answer 200.
  The API answers 503 when Redis does not, so an API cut off from its broker is unhealthy.
- ``ai-orchestrator worker``: ``GET /metrics`` on ``METRICS_PORT`` (9100) must answer 200,
  which shows the worker's event loop is alive and serving.

Exit status 0 = healthy, 1 = unhealthy (Docker's convention); one line on stdout says why
(``docker inspect`` shows it).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

TIMEOUT_SECONDS = 4.0
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def command_line(pid: str) -> list[str]:
    """The argv of process ``pid`` (empty when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def service_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The ``ai-orchestrator`` sub-command and the arguments after it, from a process argv."""
    for index, arg in enumerate(argv):
        if Path(arg).name == "ai-orchestrator" and index + 1 < len(argv):
            return argv[index + 1], list(argv[index + 2 :])
    return "", []


def _option(args: Sequence[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"{name}="):
            return arg.partition("=")[2]
    return None


def probe_url(command: str, args: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The URL that answers 200 when the service is healthy (None for an unknown command)."""
    if command in ("api", "run"):
        port = _option(args, "--port") or env.get("PORT", "").strip() or "8080"
        # `run` binds 127.0.0.1 unless told otherwise; it does not read HOST.
        host = _option(args, "--host") or ("" if command == "run" else env.get("HOST", "").strip())
        if host in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{port}/health"
    if command == "worker":
        port = env.get("METRICS_PORT", "").strip() or "9100"
        return f"http://127.0.0.1:{port}/metrics"
    return None


def check(url: str) -> tuple[bool, str]:
    """GET ``url``: (healthy, what happened)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url} unreachable: {exc}"
    return status == 200, f"{url} answered {status}"


def main(env: Mapping[str, str] | None = None) -> int:
    environ = os.environ if env is None else env
    pid = environ.get("HEALTHCHECK_PID", "").strip() or "1"
    command, args = service_command(command_line(pid))
    url = probe_url(command, args, environ)
    if url is None:
        print(f"unhealthy: process {pid} is not 'ai-orchestrator api|worker|run'")
        return 1
    healthy, detail = check(url)
    print(f"{'healthy' if healthy else 'unhealthy'}: {detail}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
