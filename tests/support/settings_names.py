"""The environment variables the services read, found by reading them.

Each service's settings class is built from a mapping that records every name it looks up,
so the list cannot fall behind the code: a new setting is in it the moment a ``from_env``
reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from orchestrator_api.config import ApiSettings
from orchestrator_telemetry.config import TelemetrySettings
from orchestrator_worker.config import WorkerSettings

__all__ = ["api_variables", "service_variables", "worker_variables"]


class _Recording(Mapping[str, str]):
    """A mapping that remembers every key it was asked for."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self._base = dict(base)
        self.names: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.names.add(key)
        return self._base[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.names.add(key)
        return self._base.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.names.add(key)
        return key in self._base

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


def api_variables() -> frozenset[str]:
    """What ``ApiSettings.from_env`` reads (``AUTH_DISABLED`` on, so it needs no keys)."""
    recording = _Recording({"AUTH_DISABLED": "true"})
    ApiSettings.from_env(recording)
    return frozenset(recording.names)


def worker_variables() -> frozenset[str]:
    """What ``WorkerSettings.from_env`` reads, its providers' and telemetry's included."""
    recording = _Recording({})
    WorkerSettings.from_env(recording)
    return frozenset(recording.names)


def telemetry_variables() -> frozenset[str]:
    recording = _Recording({})
    TelemetrySettings.from_env(recording)
    return frozenset(recording.names)


def service_variables() -> frozenset[str]:
    """Every variable either service reads."""
    return api_variables() | worker_variables() | telemetry_variables()
