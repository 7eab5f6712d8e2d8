"""Helpers for the fault-handling tests: a fake LLM that times and counts its requests, the
real OpenAI and Gemini providers pointed at it, and hooks that record the worker's decisions."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs
from aiohttp import web

from orchestrator_tasks import ResultEvent
from orchestrator_tasks.messages import EventKind
from orchestrator_worker.breaker import BreakerState
from orchestrator_worker.providers import (
    EchoProvider,
    GeminiProvider,
    GeminiSettings,
    HttpSettings,
    OpenAIProvider,
    OpenAISettings,
    ProviderRegistry,
    Secret,
)
from tests.support.fake_llm import FakeLLM

S, D, OK, FAIL = EventKind.STARTED, EventKind.DELTA, EventKind.SUCCEEDED, EventKind.FAILED

#: Fast backoff for tests: retries come within a fraction of a second.
FAST_RETRIES: dict[str, Any] = {"retry_base": 0.02, "retry_max": 0.1}


class TimedFakeLLM(FakeLLM):
    """``FakeLLM`` that also notes when each request came, per API, and how many were being
    served at once (the most at any moment, per API)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[str, float]] = []  # (api, monotonic time)
        self.active: dict[str, int] = {}
        self.most_active: dict[str, int] = {}

    def count_of(self, api: str) -> int:
        return sum(1 for request in self.requests if request.api == api)

    def times_of(self, api: str) -> list[float]:
        return [at for name, at in self.arrivals if name == api]

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        api = "gemini" if ":" in request.path else "openai"
        self.arrivals.append((api, time.monotonic()))
        self.active[api] = self.active.get(api, 0) + 1
        self.most_active[api] = max(self.most_active.get(api, 0), self.active[api])
        try:
            return await super()._serve(request)
        finally:
            self.active[api] -= 1


def llm_registry(fake: FakeLLM, *, read_timeout: float = 2.0) -> ProviderRegistry:
    """echo, plus openai and gemini on ``fake`` (short read timeouts)."""
    http = HttpSettings(connect_timeout=2.0, read_timeout=read_timeout)
    return ProviderRegistry(
        [
            EchoProvider(),
            OpenAIProvider(OpenAISettings(base_url=fake.openai_base_url, http=http)),
            GeminiProvider(
                GeminiSettings(base_url=fake.gemini_base_url, api_key=Secret("g-key"), http=http)
            ),
        ]
    )


@attrs.define
class RecordingHooks:
    """``WorkerHooks`` that keep every call."""

    retries: list[tuple[str, str, int, float]] = attrs.field(factory=list)
    fallbacks: list[tuple[str, str, str]] = attrs.field(factory=list)
    deferrals: list[tuple[str, float, str]] = attrs.field(factory=list)
    dead: list[tuple[str, str]] = attrs.field(factory=list)
    breaker: list[tuple[str, BreakerState, BreakerState]] = attrs.field(factory=list)
    pauses: list[tuple[str, float, str]] = attrs.field(factory=list)

    def retry_scheduled(self, provider: str, error_type: str, attempt: int, delay: float) -> None:
        self.retries.append((provider, error_type, attempt, delay))

    def fallback(self, from_provider: str, to_provider: str, error_type: str) -> None:
        self.fallbacks.append((from_provider, to_provider, error_type))

    def deferred(self, provider: str, delay: float, reason: str) -> None:
        self.deferrals.append((provider, delay, reason))

    def dead_lettered(self, reason: str, error_type: str) -> None:
        self.dead.append((reason, error_type))

    def breaker_changed(self, provider: str, old: BreakerState, new: BreakerState) -> None:
        self.breaker.append((provider, old, new))

    def provider_paused(self, provider: str, seconds: float, error_type: str) -> None:
        self.pauses.append((provider, seconds, error_type))


def of_attempt(events: Sequence[ResultEvent], attempt: int) -> list[ResultEvent]:
    return [event for event in events if event.attempt == attempt]


def streamed(events: Sequence[ResultEvent]) -> str:
    """The deltas of ``events`` joined."""
    return "".join(event.text for event in events if event.kind is D)
