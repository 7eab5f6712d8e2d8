"""Every metric the services define, on one registry, each with at least one series: what
the dashboard and lint tests read (as run mode's shared registry would show it)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest

from orchestrator_api.metrics import ApiMetrics
from orchestrator_api.results import ConsumerStats
from orchestrator_api.streaming import StreamRegistry
from orchestrator_broker import MemoryBroker, Message
from orchestrator_tasks.messages import EventKind, ResultEvent, Usage
from orchestrator_telemetry.metrics import refresh
from orchestrator_worker.metrics import WorkerMetrics
from tests.metrics.exposition import Family, parse


def populated_registry() -> CollectorRegistry:
    """The API's and the worker's metrics on one registry, each family with a series."""
    registry = CollectorRegistry()
    api, worker = ApiMetrics(registry), WorkerMetrics(registry)
    api.task_accepted("acme", None)
    api.task_rate_limited("acme")
    api.task_shared("acme", "hit")
    api.http.labels("GET", "/v1/tasks/{task_id}", "200").observe(0.01)
    api.result_applied(
        ResultEvent(
            task_id="t",
            kind=EventKind.SUCCEEDED,
            attempt=1,
            seq=0,
            at=time.time(),
            tenant="acme",
            provider="echo",
            model="echo",
            usage=Usage(3, 4),
            cost_usd=0.001,
        )
    )
    api.watch_consumer(ConsumerStats(applied=1))
    api.watch_streams(StreamRegistry())
    worker.attempt_started("echo", "echo", 1, time.time())
    worker.attempt_started("echo", "echo", 2, time.time())
    worker.tenant_task("acme", 1)
    worker.provider_called("echo", "echo", 0.1)
    worker.task_succeeded("echo", "echo", Usage(3, 4), 0.001, run_seconds=0.1, submitted_at=1.0)
    worker.task_failed(None, None, "invalid_model")
    worker.task_requeued("shutdown")
    worker.task_cancelled(run_seconds=0.5, submitted_at=time.time() - 1)
    worker.retry_scheduled("openai", "rate_limit", 1, 0.5)
    worker.fallback("openai", "gemini", "timeout")
    worker.dead_lettered("max_attempts", "rate_limit")
    worker.breaker_changed("openai", "closed", "open")
    worker.provider_paused("openai", 20.0, "rate_limit")
    worker.watch(lambda: 1, 8)
    worker.watch_breakers(lambda: [("openai", "open", 19.5)])

    async def read_queues() -> None:
        broker = MemoryBroker()
        await broker.publish("tasks", Message(payload={"n": 1}))
        await broker.publish("tasks", Message(payload={"n": 2}), key="acme", priority="high")
        api.watch_queues(broker, tasks_stream="tasks", results_stream="results")
        worker.watch_queue(broker, "tasks", "workers")
        await refresh(registry)
        await broker.close()

    asyncio.run(read_queues())
    # One family past its label-set limit, so the overflow counter has a series.
    # (Tenants: model names are capped at METRICS_MAX_LABEL_VALUES long before.)
    for index in range(1001):
        api.task_rate_limited(f"tenant-{index}")
    return registry


def exposed(registry: CollectorRegistry) -> dict[str, Family]:
    """The registry's Prometheus text exposition, parsed."""
    return parse(generate_latest(registry).decode())
