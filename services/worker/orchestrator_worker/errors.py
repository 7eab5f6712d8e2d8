"""The worker's exceptions: one root, and the startup error a deployer can fix."""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error raised by ``orchestrator_worker``."""


class ConfigError(WorkerError, ValueError):
    """A worker setting (an environment variable) is malformed; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem
