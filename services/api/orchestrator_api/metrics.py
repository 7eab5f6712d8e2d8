"""The API's metrics: HTTP traffic, accepted, rate-limited and finished tasks, tokens and cost
per tenant, the results consumer, and the queues, served on ``GET /metrics`` (no auth).

Label cardinality stays bounded: ``route`` is the route template (``/v1/tasks/{task_id}``,
``unmatched`` for any path without a route), ``method`` one of the standard methods (else
``_OTHER``), ``status`` the response code; ``tenant`` comes from ``API_KEYS`` (a handful per
deployment); ``model`` and ``provider`` are what tasks name, which clients choose, so each
family keeps at most ``orchestrator_telemetry.metrics.MAX_SERIES`` label sets (the rest count
under ``__overflow__``). No task id, prompt or key is ever a label.

The families are prometheus_client's, on the app's own ``CollectorRegistry``. Everything here
is O(1) per request or result: a dict lookup for the labelled child and its update. The
results consumer's counters and the open streams are read at scrape time (a collector and a
gauge function); queue depths from the broker at scrape time, at most every two seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import AbstractRoute
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator_broker import Broker
from orchestrator_tasks import TASKS_GROUP
from orchestrator_tasks.messages import EventKind, ResultEvent
from orchestrator_telemetry.metrics import MAX_LABEL_VALUES, TracedHistogram, counter, histogram
from orchestrator_telemetry.queue_metrics import QueueMetrics

from .results import ConsumerStats
from .streaming import StreamRegistry

__all__ = ["HTTP_BUCKETS", "METRICS", "RESULT_DELAY_BUCKETS", "ApiMetrics"]

#: Request latency buckets (seconds): sub-millisecond answers up to slow 503s.
HTTP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: From a worker publishing a result event to the API applying it (seconds).
RESULT_DELAY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
#: The consumer group the workers read tasks with (their ``CONSUMER_GROUP`` default).
DEFAULT_WORKER_GROUP: Final = TASKS_GROUP
#: Status recorded for a request whose client went away before the answer (nginx's code).
CLIENT_CLOSED: Final = 499


_RESULT_EVENTS: Final = (
    "orchestrator_api_result_events",
    "Result events taken by the results consumer, by outcome (applied, ignored "
    "duplicates or stale, dead_lettered invalid, nacked after an error).",
)
_STORE_RETRIES: Final = (
    "orchestrator_api_results_store_retries",
    "Times the results consumer waited for the task store to come back.",
)


class _ConsumerCollector(Collector):
    """The results consumer's counters (``ConsumerStats``), read at each scrape."""

    def __init__(self) -> None:
        self.stats: ConsumerStats | None = None

    def describe(self) -> list[Metric]:
        return [
            CounterMetricFamily(*_RESULT_EVENTS, labels=("outcome",)),
            CounterMetricFamily(*_STORE_RETRIES),
        ]

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        if stats is None:
            return
        events = CounterMetricFamily(*_RESULT_EVENTS, labels=("outcome",))
        events.add_metric(("applied",), stats.applied)
        events.add_metric(("ignored",), stats.ignored)
        events.add_metric(("dead_lettered",), stats.dead_lettered)
        events.add_metric(("nacked",), stats.nacked)
        yield events
        yield CounterMetricFamily(*_STORE_RETRIES, value=stats.store_retries)


class ApiMetrics:
    """The API's metric families on ``registry`` (a new one by default)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_label_values: int = MAX_LABEL_VALUES,
    ) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        # Model names are the client's choice: each family keeps max_label_values of them
        # (METRICS_MAX_LABEL_VALUES), the rest count as "other". (HTTP methods are already
        # bounded: the middleware counts unknown ones as "_OTHER".)
        self.http = histogram(
            registry,
            "orchestrator_api_http_request_duration_seconds",
            "HTTP requests by method, route template and status, and how long they took "
            "(SSE and WebSocket requests last as long as their stream).",
            ("method", "route", "status"),
            buckets=HTTP_BUCKETS,
        )
        self.tasks_accepted = counter(
            registry,
            "orchestrator_api_tasks_accepted_total",
            "Tasks accepted (202) by tenant and requested model (default: the worker's).",
            ("tenant", "model"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.tasks_rate_limited = counter(
            registry,
            "orchestrator_api_tasks_rate_limited_total",
            "Submissions refused (429) because the tenant was over its RATE_LIMITS rate, by "
            "tenant.",
            ("tenant",),
        )
        self.tasks_shared = counter(
            registry,
            "orchestrator_api_tasks_shared_total",
            "Accepted tasks that made no provider call of their own, by tenant and how: "
            "answered from the prompt cache (hit) or joined to an identical task in flight "
            "(joined).",
            ("tenant", "outcome"),
        )
        self.tasks_finished = counter(
            registry,
            "orchestrator_api_tasks_finished_total",
            "Terminal results applied, by tenant, provider, model and status.",
            ("tenant", "provider", "model", "status"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.tokens = counter(
            registry,
            "orchestrator_api_tokens_total",
            "Tokens of applied results, by tenant, provider, model and direction (input, output).",
            ("tenant", "provider", "model", "direction"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.cost = counter(
            registry,
            "orchestrator_api_cost_usd_total",
            "Cost in US dollars of applied results (the worker's MODEL_PRICES), by tenant, "
            "provider and model.",
            ("tenant", "provider", "model"),
            capped=("model",),
            max_label_values=max_label_values,
        )
        self.result_delay = histogram(
            registry,
            "orchestrator_api_result_delay_seconds",
            "From a worker publishing a result event to this API applying it, by event kind.",
            ("kind",),
            buckets=RESULT_DELAY_BUCKETS,
        )
        self._consumer = _ConsumerCollector()
        registry.register(self._consumer)
        self.open_streams = Gauge(
            "orchestrator_api_open_streams",
            "SSE and WebSocket event streams open right now.",
            registry=registry,
        )
        self._delay = {kind: self.result_delay.labels(kind.value) for kind in EventKind}
        self.queues: QueueMetrics | None = None

    # ---- hooks ----------------------------------------------------------------------------

    def task_accepted(self, tenant: str, model: str | None) -> None:
        """A new task was accepted (not an idempotent replay)."""
        self.tasks_accepted.labels(tenant, model or "default").inc()

    def task_rate_limited(self, tenant: str) -> None:
        """A submission was refused with a 429: the tenant is over its rate."""
        self.tasks_rate_limited.labels(tenant).inc()

    def task_shared(self, tenant: str, outcome: str) -> None:
        """An accepted task was a prompt cache ``hit`` or ``joined`` an identical one."""
        self.tasks_shared.labels(tenant, outcome).inc()

    def result_applied(self, event: ResultEvent) -> None:
        """The results consumer applied ``event`` (the delivery's span is current, so the
        delay histogram's exemplar names the task's trace)."""
        self._delay[event.kind].observe_traced(max(0.0, time.time() - event.at))
        if event.kind is not EventKind.SUCCEEDED and event.kind is not EventKind.FAILED:
            return
        tenant, provider, model = event.tenant, event.provider or "none", event.model or "none"
        self.tasks_finished.labels(tenant, provider, model, event.kind.value).inc()
        usage = event.usage
        if usage is not None:
            if usage.input_tokens > 0:
                self.tokens.labels(tenant, provider, model, "input").inc(usage.input_tokens)
            if usage.output_tokens > 0:
                self.tokens.labels(tenant, provider, model, "output").inc(usage.output_tokens)
        cost = getattr(event, "cost_usd", None)
        if cost:
            self.cost.labels(tenant, provider, model).inc(cost)

    # ---- scrape-time collection -----------------------------------------------------------

    def watch_consumer(self, stats: ConsumerStats) -> None:
        """Report the results consumer's counters (``result_events``, ``store_retries``) at
        each scrape."""
        self._consumer.stats = stats

    def watch_streams(self, streams: StreamRegistry) -> None:
        """Report the app's open SSE/WebSocket streams at each scrape."""
        self.open_streams.set_function(lambda: streams.open)

    def watch_queues(
        self,
        broker: Broker,
        *,
        tasks_stream: str,
        results_stream: str,
        worker_group: str = DEFAULT_WORKER_GROUP,
        results_group: str = "api",
    ) -> QueueMetrics:
        """Backlog and pending of the tasks stream (the workers' group) and of the results
        stream (the API's group), plus both dead-letter streams and the tasks' waiting room
        (by priority, by tenant), read at scrape time."""
        self.queues = queues = QueueMetrics.on(self.registry, broker)
        queues.watch(tasks_stream, worker_group, dead_letters=True, fair=True)
        queues.watch(results_stream, results_group, dead_letters=True)
        return queues

    # ---- HTTP -----------------------------------------------------------------------------

    def middleware(self) -> Middleware:
        """Times every request into ``orchestrator_api_http_request_duration_seconds``.

        Put it inside the tracing middleware (so exemplars carry the request's trace id) and
        outside the problem-JSON error middleware (so it sees the statuses clients see).
        """
        histogram = self.http
        # Keyed by the matched route object: its method and template are fixed. Unmatched
        # requests (404/405) get a fresh system route each time, so they are not cached.
        children: dict[tuple[AbstractRoute, int], TracedHistogram] = {}
        perf = time.perf_counter

        def child(request: web.Request, route: AbstractRoute, status: int) -> TracedHistogram:
            resource = route.resource
            method = request.method if request.method in _METHODS else "_OTHER"
            if resource is None:
                return histogram.labels(method, "unmatched", str(status))
            found = histogram.labels(method, resource.canonical, str(status))
            children[route, status] = found
            return found

        @web.middleware
        async def observed(request: web.Request, handler: Handler) -> web.StreamResponse:
            start = perf()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:
                status = CLIENT_CLOSED
                raise
            finally:
                end = perf()
                route = request.match_info.route
                found = children.get((route, status))
                if found is None:
                    found = child(request, route, status)
                found.observe_traced(end - start, end)

        return observed


#: The app's metrics, for handlers that count (``request.app[METRICS]``).
METRICS = web.AppKey("orchestrator_api.metrics", ApiMetrics)
