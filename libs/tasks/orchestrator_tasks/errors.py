"""What goes wrong when a payload does not fit the contract."""

from __future__ import annotations

__all__ = ["ContractError", "InvalidResultEvent", "InvalidTask"]


class ContractError(ValueError):
    """A stream payload that is not what the contract says; the message says why."""


class InvalidTask(ContractError):
    """A task payload that cannot be a ``TaskMessage``; carries what could be salvaged, so
    the worker can fail the task the client is waiting for instead of dropping it."""

    def __init__(self, reason: str, task_id: str | None = None, tenant: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.task_id = task_id
        self.tenant = tenant


class InvalidResultEvent(ContractError):
    """A results stream payload that is not a ``ResultEvent``."""
