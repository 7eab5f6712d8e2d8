"""The worker's exceptions: one root, and the startup error a deployer can fix."""

from __future__ import annotations

# A malformed setting is the one ConfigError of every package (``VARIABLE: problem``), so a
# launcher catches the worker's, the API's and the telemetry library's with one ``except``.
from orchestrator_settings import ConfigError

__all__ = ["ConfigError", "WorkerError"]


class WorkerError(Exception):
    """Root of every error raised by ``orchestrator_worker`` (setting errors aside: those are
    ``ConfigError``, shared with the other packages)."""
