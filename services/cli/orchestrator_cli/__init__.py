"""The ``ai-orchestrator`` command line: the one place that composes the API and the worker.

``ai-orchestrator api`` loads only the API service, ``worker`` only the worker service, and
``run`` both in one process; ``submit`` is a small client of a running API.
"""

from .main import main

__all__ = ["main"]
