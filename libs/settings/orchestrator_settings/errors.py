"""The one configuration error every package raises for a bad environment variable."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A setting (an environment variable) is missing or malformed.

    ``str()`` is one line, ``"VARIABLE: problem"``, fit to print as the reason a process did
    not start. ``variable`` and ``problem`` are kept apart for callers and tests.
    """

    def __init__(self, variable: str, problem: str) -> None:
        # One line, whatever the problem text held (an OSError or JSON error may span lines).
        problem = " ".join(part.strip() for part in problem.splitlines() if part.strip())
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem
