"""The worker's metrics: tasks and their outcomes, provider calls, tokens and cost, retries,
dead letters, circuit breakers and provider pauses, concurrency, task latency and the tasks
queue.

Served on ``GET /metrics`` at ``METRICS_HOST:METRICS_PORT`` (see ``service``). Labels stay
bounded: ``provider`` is a registry name, ``error_type`` one of the worker's error types,
``model`` the answering model (clients choose it, so each family keeps at most
``orchestrator_telemetry.metrics.MAX_SERIES`` label sets; the rest count under
``__overflow__``). No task id,
tenant or prompt is a label here: per-tenant usage is counted by the API from the results it
applies.

The task latency histograms are observed here, where all three instants are known without
a store read: the API's acceptance (``submitted_at`` in the task), the attempt's start, and
the terminal event's publication (the API applies it ``orchestrator_api_result_delay_seconds``
later). Latency histograms carry the task's trace id as exemplars: the delivery's
``process`` span is current while a task is handled.

The families are prometheus_client's, on the worker's own ``CollectorRegistry``; in-flight
tasks, breaker states and pauses are read at scrape time (a gauge function and a collector).
``WorkerMetrics`` also satisfies ``hooks.WorkerHooks`` (retries, fallbacks, deferrals, dead
letters, breaker changes, pauses). Every method is a few dict lookups and additions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator_broker import Broker
from orchestrator_tasks.messages import Usage
from orchestrator_telemetry.metrics import MAX_LABEL_VALUES, counter, gauge, histogram
from orchestrator_telemetry.queue_metrics import QueueMetrics

__all__ = [
    "BREAKER_STATES",
    "PROVIDER_BUCKETS",
    "QUEUE_WAIT_BUCKETS",
    "WorkerMetrics",
]

#: Model call and task run times (seconds): instant echo answers to ten-minute generations.
PROVIDER_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: Time a task waited for a worker (seconds): milliseconds when idle, minutes when backed up.
QUEUE_WAIT_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
#: ``orchestrator_worker_circuit_breaker_state`` values.
BREAKER_STATES: Final = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

_BREAKER_STATE: Final = (
    "orchestrator_worker_circuit_breaker_state",
    "Circuit breaker of each provider: 0 closed, 1 half-open (probing), 2 open.",
)
_PAUSED_SECONDS: Final = (
    "orchestrator_worker_provider_paused_seconds",
    "Seconds left of each provider's pause in this worker (0: not paused).",
)


class _ProviderCollector(Collector):
    """Each provider's circuit breaker state and the seconds left of its pause: the last
    state change heard (``changed``), overridden at each scrape by ``source()``."""

    def __init__(self) -> None:
        self.source: Callable[[], list[tuple[str, str, float]]] | None = None
        self.states: dict[str, float] = {}  # providers are a registry's names: bounded
        self.paused: dict[str, float] = {}

    def changed(self, provider: str, state: str) -> None:
        self.states[provider] = BREAKER_STATES.get(str(state), -1.0)

    def describe(self) -> list[Metric]:
        return [
            GaugeMetricFamily(*_BREAKER_STATE, labels=("provider",)),
            GaugeMetricFamily(*_PAUSED_SECONDS, labels=("provider",)),
        ]

    def collect(self) -> Iterator[Metric]:
        if self.source is not None:
            for provider, state, paused in self.source():
                self.changed(provider, state)
                self.paused[provider] = paused
        if self.states:
            states = GaugeMetricFamily(*_BREAKER_STATE, labels=("provider",))
            for provider, value in self.states.items():
                states.add_metric((provider,), value)
            yield states
        if self.paused:
            paused_seconds = GaugeMetricFamily(*_PAUSED_SECONDS, labels=("provider",))
            for provider, seconds in self.paused.items():
                paused_seconds.add_metric((provider,), seconds)
            yield paused_seconds


class WorkerMetrics:
    """The worker's metric families on ``registry`` (a new one by default)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_label_values: int = MAX_LABEL_VALUES,
    ) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        # Model names are the client's choice: each family keeps max_label_values of them
        # (METRICS_MAX_LABEL_VALUES), the rest count as "other".
        self.started = counter(
            registry,
            "orchestrator_worker_tasks_started_total",
            "Task attempts started (a retried task counts once per attempt), by provider and "
            "model.",
            ("provider", "model"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.succeeded = counter(
            registry,
            "orchestrator_worker_tasks_succeeded_total",
            "Tasks that ended with an answer, by provider and model.",
            ("provider", "model"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.failed = counter(
            registry,
            "orchestrator_worker_tasks_failed_total",
            "Tasks that ended failed (the client got a failed event), by provider, model and "
            "error type.",
            ("provider", "model", "error_type"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.cancelled = counter(
            registry,
            "orchestrator_worker_tasks_cancelled_total",
            "Tasks cancelled by their client, by when: queued (no provider was called) or "
            "running (its call was stopped).",
            ("stage",),
        )
        self.retried = counter(
            registry,
            "orchestrator_worker_tasks_retried_total",
            "Attempts that failed retryably and were handed back for a later retry, by "
            "provider and error type.",
            ("provider", "error_type"),
        )
        self.requeued = counter(
            registry,
            "orchestrator_worker_tasks_requeued_total",
            "Tasks handed back without an outcome, by reason (circuit_open, paused: deferred "
            "untried; broker_error: an event could not be published; shutdown).",
            ("reason",),
        )
        self.fallbacks = counter(
            registry,
            "orchestrator_worker_fallbacks_total",
            "Tasks moved from one provider of a model alias to the next, by providers and error "
            "type.",
            ("from_provider", "to_provider", "error_type"),
        )
        self.dead_letters = counter(
            registry,
            "orchestrator_worker_tasks_dead_lettered_total",
            "Tasks this worker moved to the dead-letter stream, by the error type the client "
            "was told (invalid_task for payloads that are not tasks).",
            ("error_type",),
        )
        self.provider_duration = histogram(
            registry,
            "orchestrator_worker_provider_duration_seconds",
            "Model calls from request to the end of the stream, by provider, model and outcome "
            "(success or error).",
            ("provider", "model", "outcome"),
            buckets=PROVIDER_BUCKETS,
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.tokens = counter(
            registry,
            "orchestrator_worker_tokens_total",
            "Tokens of successful answers, by provider, model and direction (input, output).",
            ("provider", "model", "direction"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.cost = counter(
            registry,
            "orchestrator_worker_cost_usd_total",
            "Cost in US dollars of successful answers (MODEL_PRICES), by provider and model.",
            ("provider", "model"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.in_flight = Gauge(
            "orchestrator_worker_tasks_in_flight",
            "Tasks this worker is running right now.",
            registry=registry,
        )
        self.concurrency = Gauge(
            "orchestrator_worker_concurrency_limit",
            "Tasks this worker may run at once (NUMBER_OF_WORKERS).",
            registry=registry,
        )
        self.providers = _ProviderCollector()
        registry.register(self.providers)
        self.breaker_transitions = counter(
            registry,
            "orchestrator_worker_circuit_breaker_transitions_total",
            "Circuit breaker state changes, by provider and new state.",
            ("provider", "state"),
        )
        self.pauses = counter(
            registry,
            "orchestrator_worker_provider_pauses_total",
            "Provider pauses begun or extended by a second or more (the provider asked for a "
            "wait: Retry-After), by provider and the error type that carried the wait.",
            ("provider", "error_type"),
        )
        self.queue_wait = histogram(
            registry,
            "orchestrator_task_queue_wait_seconds",
            "From the API accepting a task to a worker starting an attempt, by attempt (first, "
            "retry: includes the earlier attempts and their backoff).",
            ("attempt",),
            buckets=QUEUE_WAIT_BUCKETS,
        )
        self.run_time = histogram(
            registry,
            "orchestrator_task_run_seconds",
            "From an attempt's start to its terminal event, by status (succeeded, failed).",
            ("status",),
            buckets=PROVIDER_BUCKETS,
        )
        self.total_time = histogram(
            registry,
            "orchestrator_task_total_seconds",
            "From the API accepting a task to its terminal event, by status.",
            ("status",),
            buckets=QUEUE_WAIT_BUCKETS,
        )
        self.priority_wait = histogram(
            registry,
            "orchestrator_task_priority_queue_wait_seconds",
            "From the API accepting a task to a worker starting its first attempt, by the "
            "task's priority (high, normal, low).",
            ("priority",),
            buckets=QUEUE_WAIT_BUCKETS,
        )
        self.tenant_running = gauge(
            registry,
            "orchestrator_worker_tenant_tasks_running",
            "Tasks this worker runs now, by tenant (METRICS_MAX_LABEL_VALUES tenants; later "
            "new ones are other): sum over workers for a tenant's share.",
            ("tenant",),
            capped=("tenant",),
            max_label_values=max_label_values,
        )
        self._wait = {
            "first": self.queue_wait.labels("first"),
            "retry": self.queue_wait.labels("retry"),
        }
        self.queues: QueueMetrics | None = None

    # ---- the task's life ------------------------------------------------------------------

    def attempt_started(
        self,
        provider: str,
        model: str,
        attempt: int,
        submitted_at: float,
        priority: str = "normal",
    ) -> None:
        """An attempt begins its model call (``attempt`` = the delivery count)."""
        self.started.labels(provider, model).inc()
        if submitted_at > 0:
            wait = max(0.0, time.time() - submitted_at)
            self._wait["first" if attempt <= 1 else "retry"].observe_traced(wait)
            if attempt <= 1:
                self.priority_wait.labels(priority).observe_traced(wait)

    def tenant_task(self, tenant: str, delta: int) -> None:
        """A task of ``tenant`` began (+1) or ended (-1) in this worker."""
        self.tenant_running.labels(tenant).inc(delta)

    def provider_called(
        self, provider: str, model: str, seconds: float, error_type: str | None = None
    ) -> None:
        """A model call ended after ``seconds``, with ``error_type`` if it failed."""
        outcome = "success" if error_type is None else "error"
        self.provider_duration.labels(provider, model, outcome).observe_traced(seconds)

    def task_succeeded(
        self,
        provider: str,
        model: str,
        usage: Usage | None,
        cost_usd: float | None,
        *,
        run_seconds: float,
        submitted_at: float = 0.0,
    ) -> None:
        """The ``succeeded`` event of a task went out."""
        self.succeeded.labels(provider, model).inc()
        if usage is not None:
            if usage.input_tokens > 0:
                self.tokens.labels(provider, model, "input").inc(usage.input_tokens)
            if usage.output_tokens > 0:
                self.tokens.labels(provider, model, "output").inc(usage.output_tokens)
        if cost_usd:
            self.cost.labels(provider, model).inc(cost_usd)
        self._ended("succeeded", run_seconds, submitted_at)

    def task_failed(
        self,
        provider: str | None,
        model: str | None,
        error_type: str,
        *,
        run_seconds: float | None = None,
        submitted_at: float = 0.0,
    ) -> None:
        """The ``failed`` event of a task went out (``provider`` None: no provider was
        reached, e.g. an unknown model)."""
        self.failed.labels(provider or "none", model or "none", error_type).inc()
        self._ended("failed", run_seconds, submitted_at)

    def task_cancelled(self, *, run_seconds: float | None, submitted_at: float = 0.0) -> None:
        """The ``cancelled`` event of a task went out (its client cancelled it)."""
        self.cancelled.labels("queued" if run_seconds is None else "running").inc()
        self._ended("cancelled", run_seconds, submitted_at)

    def _ended(self, status: str, run_seconds: float | None, submitted_at: float) -> None:
        if run_seconds is not None:
            self.run_time.labels(status).observe_traced(run_seconds)
        if submitted_at > 0:
            self.total_time.labels(status).observe_traced(max(0.0, time.time() - submitted_at))

    def task_requeued(self, reason: str) -> None:
        """A task was handed back without an outcome (``broker_error``, ``shutdown``)."""
        self.requeued.labels(reason).inc()

    def task_rejected(self) -> None:
        """A payload that is not a task was dead-lettered."""
        self.dead_letters.labels("invalid_task").inc()

    # ---- hooks.WorkerHooks ----------------------------------------------------------------

    def retry_scheduled(self, provider: str, error_type: str, attempt: int, delay: float) -> None:
        self.retried.labels(provider, error_type).inc()

    def fallback(self, from_provider: str, to_provider: str, error_type: str) -> None:
        self.fallbacks.labels(from_provider, to_provider, error_type).inc()

    def deferred(self, provider: str, delay: float, reason: str) -> None:
        self.requeued.labels(reason).inc()

    def dead_lettered(self, reason: str, error_type: str) -> None:
        self.dead_letters.labels(error_type).inc()

    def breaker_changed(self, provider: str, old: str, new: str) -> None:
        self.providers.changed(provider, new)
        self.breaker_transitions.labels(provider, str(new)).inc()

    def provider_paused(self, provider: str, seconds: float, error_type: str) -> None:
        # The tasks a pause holds back count elsewhere (requeued{reason="paused"},
        # fallbacks{error_type="paused"}); the seconds left are read at scrape time.
        self.pauses.labels(provider, error_type).inc()

    # ---- scrape-time collection -----------------------------------------------------------

    def watch(self, in_flight: Callable[[], int], concurrency: int) -> None:
        """Report ``in_flight()`` and the concurrency limit at each scrape."""
        self.concurrency.set(concurrency)
        self.in_flight.set_function(in_flight)

    def watch_breakers(self, providers: Callable[[], list[tuple[str, str, float]]]) -> None:
        """Report every provider's breaker state and the seconds left of its pause at each
        scrape: ``providers()`` lists (provider, state, seconds paused) triples, so providers
        whose state never changed show up too (0 seconds: not paused)."""
        self.providers.source = providers

    def watch_queue(self, broker: Broker, stream: str, group: str) -> QueueMetrics:
        """Backlog and pending of the tasks stream for ``group``, and its waiting room by
        priority and by tenant, read at scrape time (the dead-letter count is the API's to
        read: it fetches entries)."""
        self.queues = queues = QueueMetrics.on(self.registry, broker)
        queues.watch(stream, group, fair=True)
        return queues
