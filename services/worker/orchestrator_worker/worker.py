"""The Worker: up to ``NUMBER_OF_WORKERS`` tasks at once from one consumer group.

Concurrency is a semaphore of slots, and a delivery is asked for only once a slot is free,
so a busy worker leaves new tasks to the other workers of the group. Each task runs as its own
asyncio task (``TaskRunner.handle``); the broker renews their leases (``auto_extend``) while
they run, so only a crashed worker's tasks are reclaimed, ``LEASE_SECONDS`` after it stopped.

Stopping (``stop()``, SIGTERM): no new deliveries are fetched; in-flight tasks get
``SHUTDOWN_GRACE_SECONDS`` to finish; the rest are cancelled, which hands each back with
``nack(0)`` for immediate redelivery to another worker. ``run()`` then returns.

While ``run()`` runs, the worker announces what it serves (``advert``) in the broker under
``PRESENCE_TTL_SECONDS`` (see ``presence``), and withdraws it as it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from orchestrator_broker import Broker, BrokerError, ConsumeOptions, Delivery, default_consumer_name
from orchestrator_broker import ConfigError as BrokerConfigError
from orchestrator_tasks import WorkerAdvert, presence_group

from .cancels import Cancels
from .config import WorkerSettings
from .errors import ConfigError
from .hooks import WorkerHooks, safe_hooks
from .limits import ProviderGuards
from .metrics import WorkerMetrics
from .presence import advertising
from .pricing import PriceTable
from .providers import ProviderRegistry, default_registry
from .routing import ModelRouter
from .runner import TaskRunner

log = logging.getLogger(__name__)

#: A context entered around each delivery's handling (e.g. making its trace span current).
DeliveryContext = Callable[[Delivery], AbstractContextManager[Any]]

#: Backoff while the broker cannot be reached at startup or the consumer breaks.
_RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)
#: How long cancelled tasks may take to hand their deliveries back.
_HAND_BACK_WAIT = 10.0


def check_settings(
    settings: WorkerSettings, providers: ProviderRegistry, *, default_model: bool = True
) -> None:
    """Raise ``ConfigError`` naming the variable if ``MODEL_ALIASES``,
    ``PROVIDER_CONCURRENCY`` or (with ``default_model``) the registry's default model name
    providers ``providers`` lacks, or if ``MAX_ATTEMPTS`` is not below ``MAX_DELIVERIES``
    (see ``config``)."""
    ModelRouter(providers, settings.model_aliases).check(default_model=default_model)
    ProviderGuards(concurrency=settings.provider_concurrency).check(providers.names)
    if settings.max_attempts >= settings.max_deliveries:
        raise ConfigError(
            "MAX_ATTEMPTS",
            f"{settings.max_attempts} must be less than MAX_DELIVERIES ({settings.max_deliveries})",
        )


def default_fetch_batch(concurrency: int) -> int:
    """Entries read per broker round trip: a tenth of the slots, 1 to 100.

    A batch is fetched when a slot is free, and its entries wait in this process until
    slots free up; a small batch keeps that prefetch (and thus unfair load) small, a larger
    one saves round trips when thousands of short tasks a second go through.
    """
    return max(1, min(100, concurrency // 10))


class Worker:
    """Consumes the tasks stream and runs up to ``settings.concurrency`` tasks at once.

    ``providers`` defaults to ``default_registry`` with ``settings.providers`` (closed by
    the worker at the end of ``run()``; a registry passed in stays the caller's to close).
    ``delivery_context`` wraps the handling of each delivery (telemetry passes one that makes
    the delivery's ``process`` span current, so result events join the task's trace).
    ``started_after``: how long an attempt without text runs before its ``started`` event is
    written (see ``events``). ``hooks`` hear every retry, fallback, deferral, dead letter,
    circuit breaker change and provider pause (for metrics; ``guards`` exposes breaker states,
    pauses and calls in flight per provider). ``metrics`` count outcomes, model calls, tokens,
    cost, latency, in-flight tasks, breaker states and the tasks queue (they also serve as
    ``hooks`` when none are given); serve them with ``service`` or
    ``orchestrator_telemetry.metrics_http``.

    Raises ``ConfigError`` (naming the variable) for model aliases or provider limits that
    do not fit ``providers``.
    """

    def __init__(
        self,
        broker: Broker,
        settings: WorkerSettings,
        *,
        providers: ProviderRegistry | None = None,
        delivery_context: DeliveryContext | None = None,
        fetch_batch: int | None = None,
        started_after: float = 1.0,
        hooks: WorkerHooks | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._owns_providers = providers is None
        self._providers = providers or default_registry(
            settings.default_model, settings=settings.providers
        )
        self._delivery_context = delivery_context
        self.consumer = settings.consumer_name or default_consumer_name(settings.app_id)
        self._options = ConsumeOptions(
            batch_size=fetch_batch or default_fetch_batch(settings.concurrency),
            lease=settings.lease_seconds,
            max_deliveries=settings.max_deliveries,
            auto_extend=True,
            fairness=settings.fairness,
        )
        self._hooks = safe_hooks(hooks if hooks is not None else metrics)
        self._metrics = metrics
        self.router = ModelRouter(self._providers, settings.model_aliases)
        self.guards = ProviderGuards(
            concurrency=settings.provider_concurrency,
            breaker_failures=settings.breaker_failures,
            breaker_cooldown=settings.breaker_cooldown,
            on_breaker_change=self._hooks.breaker_changed,
            on_pause=self._hooks.provider_paused,
        )
        # (serve() checks the default model too; an embedding caller may route every task)
        check_settings(settings, self._providers, default_model=False)
        self.cancels = Cancels(broker)
        self._runner = TaskRunner(
            broker,
            self._providers,
            results_stream=settings.results_stream,
            task_timeout=settings.task_timeout,
            task_deadline=settings.deadline_seconds,
            flush_interval=settings.delta_flush_interval,
            started_after=started_after,
            router=self.router,
            retry=settings.retry_policy,
            guards=self.guards,
            prices=PriceTable(settings.model_prices),
            hooks=self._hooks,
            metrics=metrics,
            cancels=self.cancels,
        )
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = False
        self._force = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        if metrics is not None:
            metrics.watch(lambda: len(self._tasks), settings.concurrency)
            metrics.watch_breakers(self._breakers)
            metrics.watch_queue(broker, settings.stream, settings.consumer_group)

    def _breakers(self) -> list[tuple[str, str, float]]:
        """(provider, circuit state, seconds left of its pause) of every provider, for
        metrics; a provider not called yet is closed and not paused."""
        made = self.guards.guards
        return [
            (name, made[name].breaker.state.value, made[name].breaker.paused_for())
            if name in made
            else (name, "closed", 0.0)
            for name in self._providers.names
        ]

    @property
    def settings(self) -> WorkerSettings:
        return self._settings

    def advert(self, started_at: float = 0.0) -> WorkerAdvert:
        """What this worker serves, as it announces it to the API."""
        settings = self._settings
        return WorkerAdvert(
            consumer=self.consumer,
            providers=tuple(self._providers.names),
            default_model=settings.default_model,
            aliases=dict(settings.model_aliases),
            concurrency=settings.concurrency,
            started_at=started_at,
        )

    @property
    def in_flight(self) -> int:
        """Tasks running right now."""
        return len(self._tasks)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self, *, force: bool = False) -> None:
        """Stop fetching and let ``run()`` wind down gracefully; safe from a signal handler.

        ``force`` (a second Ctrl-C) skips the grace period: in-flight tasks are handed back
        at once. Idempotent.
        """
        self._stopping = True
        if force:
            self._force.set()
        if self._fetcher is not None and not self._fetcher.done():
            self._fetcher.cancel()

    async def run(self) -> None:
        """Work until ``stop()`` (or the broker is closed), then drain and return.

        If ``run()`` itself is cancelled, in-flight tasks are handed back without grace and
        the cancellation propagates.
        """
        if self._started:
            raise RuntimeError("a Worker runs once; make a new one")
        self._started = True
        group = presence_group(self._settings.stream)
        advert = self.advert(started_at=time.time())
        async with advertising(self._broker, group, advert, ttl=self._settings.presence_ttl):
            await self._work()

    async def _work(self) -> None:
        self._fetcher = asyncio.create_task(self._fetch(), name=f"{self.consumer} fetch")
        # One subscription for the cancels of every task this process runs, kept until the
        # last one has ended (drained or handed back).
        watch_over = asyncio.Event()
        watcher = asyncio.create_task(
            self.cancels.watch(watch_over), name=f"{self.consumer} cancels"
        )
        try:
            await asyncio.wait([self._fetcher])
            await self._drain()
            failure = None if self._fetcher.cancelled() else self._fetcher.exception()
            if failure is not None:
                # A setting the broker refuses, or a bug: in-flight work was drained above.
                raise failure
        except asyncio.CancelledError:
            self.stop(force=True)
            await self._hand_back({*self._tasks, self._fetcher})
            raise
        finally:
            watch_over.set()
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug: it must not stop the shutdown
                log.exception("the watcher of cancelled tasks failed")
            if self._owns_providers:
                await self._providers.close()

    async def _fetch(self) -> None:
        """Take one delivery per free slot until stopped."""
        settings = self._settings
        failures = 0
        while not self._stopping:
            try:
                await self._broker.ensure_group(settings.stream, settings.consumer_group)
                consumer = self._broker.consume(
                    settings.stream, settings.consumer_group, self.consumer, self._options
                )
                try:
                    while not self._stopping:
                        await self._slots.acquire()
                        try:
                            delivery = await anext(consumer)
                        except BaseException:
                            self._slots.release()
                            raise
                        failures = 0
                        self._spawn(delivery)
                finally:
                    # Hands back what the consumer fetched but did not yield yet.
                    await consumer.aclose()
            except StopAsyncIteration:
                log.info("the broker closed the tasks consumer; stopping")
                self._stopping = True
            except BrokerConfigError:
                raise
            except (BrokerError, OSError) as exc:
                delay = _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS) - 1)]
                failures += 1
                log.warning(
                    "consuming %s failed (%s); retrying in %g s", settings.stream, exc, delay
                )
                await asyncio.sleep(delay)

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._handle(delivery))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._finished)

    async def _handle(self, delivery: Delivery) -> None:
        tenant = _tenant_of(delivery)
        if self._metrics is not None and tenant is not None:
            self._metrics.tenant_task(tenant, 1)
        try:
            if self._delivery_context is None:
                await self._runner.handle(delivery)
                return
            with self._delivery_context(delivery):
                await self._runner.handle(delivery)
        finally:
            if self._metrics is not None and tenant is not None:
                self._metrics.tenant_task(tenant, -1)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            # handle() catches everything; this is a bug, but it must not kill the worker.
            log.error("a task handler failed", exc_info=task.exception())

    async def _drain(self) -> None:
        """Wait up to the grace period for in-flight tasks, then hand the rest back."""
        if self._tasks and not self._force.is_set():
            log.info(
                "stopping: waiting up to %g s for %d task(s) in flight",
                self._settings.shutdown_grace,
                len(self._tasks),
            )
            waiters = [
                asyncio.create_task(self._idle.wait()),
                asyncio.create_task(self._force.wait()),
            ]
            try:
                await asyncio.wait(
                    waiters,
                    timeout=self._settings.shutdown_grace,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if self._tasks:
            log.warning("stopping: handing %d unfinished task(s) back", len(self._tasks))
            await self._hand_back(set(self._tasks))

    async def _hand_back(self, tasks: set[asyncio.Task[None]]) -> None:
        """Cancel ``tasks``; each nacks its delivery for immediate redelivery."""
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(tasks, timeout=_HAND_BACK_WAIT)


def _tenant_of(delivery: Delivery) -> str | None:
    """The tenant a task delivery names (for metrics; None when the payload has none)."""
    payload = delivery.message.payload
    tenant = payload.get("tenant") if isinstance(payload, dict) else None
    return tenant if isinstance(tenant, str) else None
