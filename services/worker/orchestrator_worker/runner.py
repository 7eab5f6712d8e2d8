"""One task delivery, start to finish: parse, call the provider, publish events, settle.

The outcomes, and how the delivery is settled:

- the payload is not a ``TaskMessage``: dead-lettered with the reason (and, when it names a
  task id and tenant, a ``failed`` event of type ``invalid_task`` is published first, so the
  client does not wait for a task that will never run);
- the delivery count is past ``MAX_ATTEMPTS`` (earlier deliveries crashed a worker, lost
  their lease or were handed back at shutdown): ``failed`` (``attempts_exhausted``), then
  dead-lettered with the reason; no provider is called;
- unknown model: ``failed`` (``invalid_model``), ack;
- the provider answers: ``started``, deltas, ``succeeded`` (with ``cost_usd`` from the price
  table), ack (no ``started`` for a first attempt that takes under a second and streams no
  delta: see ``events``);
- the provider raises a non-retryable ``ProviderError`` (400, 401/403, 404, content filter,
  quota): [``started``, deltas], ``failed`` (its ``type``), ack, at once;
- a *retryable* failure (``ProviderError.retryable``: rate limit, 5xx/overloaded, timeout,
  connection error, cut stream, malformed answer; or no answer within
  ``TASK_TIMEOUT_SECONDS``): when the task's model is an alias with a next target, and none
  of this attempt's text went out in a delta yet, that target is tried at once, within the
  same attempt (the result's ``provider``/``model`` say who answered). Otherwise the attempt
  ends with no terminal event and the task is handed back with ``nack(delay)``, ``delay``
  from ``retry.RetryPolicy`` (exponential backoff, full jitter, at least the provider's
  ``Retry-After``): it waits in the broker, holding no worker slot, and its next delivery is
  the next attempt, whose ``started`` event tells streaming clients to drop the text of this
  one. If this was attempt ``MAX_ATTEMPTS``: ``failed`` (the last error's type, the message
  saying the attempts are exhausted), then dead-lettered with the reason;
- the provider's circuit is open (``breaker``): the alias's next target, if any; else the
  task is handed back untried for the rest of the cooldown (with jitter), or, on its last
  attempt, fails like an exhausted retry (error type: what tripped the circuit);
- the provider is paused: a rate limit (429), an overload (529) or a 503 carrying the
  provider's wait (``Retry-After``, rate-limit reset headers) stops this process's calls to
  it until then (``breaker``), so
  that other tasks do not collect the same rate limit; its tasks are handled as for an open
  circuit (fallback ``paused``, else handed back untried until the pause is over, with
  jitter; on the last attempt they fail with the error type that paused it);
- any other exception, in the provider or in the worker itself: ``failed`` (``internal``,
  with a message naming at most the exception class: no text, no traceback, which go to the
  log), ack;
- the broker refuses an event: the attempt is abandoned and handed back with ``nack(1 s)``,
  to run again as the next attempt;
- the worker shuts down past its grace period (the handler is cancelled): handed back with
  ``nack(0)`` for immediate redelivery, or acked if its terminal event was already out.

Every hand-back raises the delivery count, which is the attempt number: deferrals for an
open circuit and shutdown hand-backs use up attempts too, so ``MAX_ATTEMPTS`` bounds how
long a task can go round. Each decision is a span event on the delivery's ``process`` span
(``orchestrator.retry``, ``orchestrator.fallback``, ``orchestrator.deferred``,
``orchestrator.paused``, ``orchestrator.attempts_exhausted``) and a call on ``WorkerHooks``
(for metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
from opentelemetry import trace

from orchestrator_broker import (
    AlreadySettled,
    Broker,
    BrokerError,
    BrokerUnavailable,
    Delivery,
    LeaseLost,
)
from orchestrator_tasks import ErrorInfo, InvalidTask, TaskMessage, decode_task

from .breaker import CIRCUIT_OPEN, PAUSED, BreakerCall, Hold
from .deadlines import Deadlines
from .events import AttemptEvents, FlushClock
from .hooks import WorkerHooks, safe_hooks
from .limits import ProviderGuards
from .metrics import WorkerMetrics
from .pricing import PriceTable
from .providers import (
    CompletionRequest,
    Finish,
    Overloaded,
    ProviderError,
    ProviderRegistry,
    RateLimited,
    Route,
)
from .retry import RetryPolicy
from .routing import ModelRouter

log = logging.getLogger(__name__)

#: How long a broken publish waits before the task runs again.
_REPUBLISH_DELAY = 1.0
#: Waits between attempts to settle a delivery while the broker is unavailable: about a
#: minute in all, enough for a Redis restart or failover. The task's slot stays taken
#: meanwhile, which is right: this worker cannot take new tasks from a broker it cannot reach.
_SETTLE_BACKOFF = (0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0, 10.0, 10.0, 10.0)
#: How long a cancelled handler may take to hand its delivery back.
_HAND_BACK_TIMEOUT = 5.0
#: What clients see for a failure we did not foresee (details go to the log only).
_CRASHED = "the worker failed unexpectedly"
#: Longest reason or message copied from a payload into a dead letter or event.
_MAX_REASON = 300


@attrs.frozen
class _Failed:
    """A provider call that did not answer: what to report, and what to do next."""

    provider: str
    error: ErrorInfo
    retryable: bool
    retry_after: float | None = None
    harder: bool = False  # back off one step more (overloaded)


def _pauses_provider(exc: ProviderError) -> bool:
    """Whether ``exc``'s wait holds for the whole provider: a rate limit, an overload, or a
    503. Other failures (a 500, a cut stream) may carry rate-limit reset headers that every
    answer has (OpenAI's ``x-ratelimit-reset-*``), which say nothing about the next call."""
    return isinstance(exc, RateLimited | Overloaded) or exc.status == 503


#: How a delivery ends: one of its settling calls, ready to run (and re-run) by ``_settle``.
_Settle = Callable[[], Awaitable[None]]


class TaskRunner:
    """Runs deliveries of the tasks stream; shared by every task of a worker.

    ``router`` maps model names (and aliases) to routes (default: the registry alone);
    ``retry`` says how often and how late failures run again; ``guards`` hold each
    provider's concurrency limit and circuit breaker; ``prices`` give ``cost_usd``;
    ``hooks`` hear every retry, fallback, deferral and dead letter; ``metrics`` count
    outcomes, model calls, tokens, cost and task latency.
    """

    def __init__(
        self,
        broker: Broker,
        providers: ProviderRegistry,
        *,
        results_stream: str,
        task_timeout: float,
        flush_interval: float,
        started_after: float = 1.0,
        router: ModelRouter | None = None,
        retry: RetryPolicy | None = None,
        guards: ProviderGuards | None = None,
        prices: PriceTable | None = None,
        hooks: WorkerHooks | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._broker = broker
        self._providers = providers
        self._results = results_stream
        self._timeout = task_timeout
        self._deadlines = Deadlines(task_timeout)
        self._clock = FlushClock(flush_interval, started_after)
        self._router = router or ModelRouter(providers)
        self._retry = retry or RetryPolicy()
        self._guards = guards or ProviderGuards()
        self._prices = prices or PriceTable()
        self._hooks = safe_hooks(hooks)
        self._metrics = metrics

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    async def handle(self, delivery: Delivery) -> None:
        """Run one delivery to its end and settle it; raises nothing but ``CancelledError``."""
        try:
            task = decode_task(delivery.message.payload)
        except InvalidTask as exc:
            await self._reject(delivery, exc)
            return
        events = AttemptEvents(
            self._broker,
            self._results,
            task_id=task.task_id,
            tenant=task.tenant,
            attempt=delivery.delivery_count,
            clock=self._clock,
        )
        settle: _Settle = delivery.ack
        try:
            settle = await self._attempt(task, events, delivery)
        except BrokerError as exc:
            log.warning(
                "task %s attempt %d abandoned, the broker refused an event: %s",
                task.task_id,
                events.attempt,
                exc,
            )
            if self._metrics is not None:
                self._metrics.task_requeued("broker_error")
            await self._settle(delivery, lambda: delivery.nack(_REPUBLISH_DELAY))
            return
        except asyncio.CancelledError:
            await self._hand_back(delivery, events)
            raise
        except Exception:
            # A bug outside the provider call: report the task failed rather than leave the
            # delivery unsettled (its lease would be renewed for as long as we run).
            log.exception("task %s attempt %d crashed", task.task_id, events.attempt)
            if not await self._report_crash(events):
                await self._settle(delivery, lambda: delivery.nack(_REPUBLISH_DELAY))
                return
            settle = delivery.ack
        finally:
            events.close()
        await self._settle(delivery, settle)

    async def _report_crash(self, events: AttemptEvents) -> bool:
        """Publish ``failed``/``internal`` unless a terminal event is out; False if we could
        not (the delivery is then handed back to run again)."""
        if events.terminal_published:
            return True
        try:
            await events.failed(ErrorInfo(type="internal", message=_CRASHED))
        except Exception as exc:
            log.warning("could not report the crash of task %s: %s", events.task_id, exc)
            return False
        if self._metrics is not None:
            self._metrics.task_failed(events.provider, events.model, "internal")
        return True

    async def _attempt(
        self, task: TaskMessage, events: AttemptEvents, delivery: Delivery
    ) -> _Settle:
        """Run this attempt: its targets in turn until one answers; how to settle."""
        attempt = events.attempt
        if attempt > self._retry.max_attempts:
            return await self._crashed_too_often(task, events, delivery)
        try:
            routes = self._router.routes(task.model, task.parameters)
        except ProviderError as exc:
            events.model = task.model
            await events.failed(ErrorInfo(type=exc.type, message=exc.message))
            if self._metrics is not None:  # the model name is the client's: not a label
                self._metrics.task_failed(None, None, exc.type, submitted_at=task.submitted_at)
            return delivery.ack
        last: _Failed | None = None  # the last target that failed retryably
        blocked: list[tuple[str, Hold]] = []  # providers skipped: open circuit or paused
        begun = False
        began = 0.0  # monotonic start of the first call of this attempt
        metrics = self._metrics
        for route in routes:
            name = route.provider.name
            guard = self._guards[name]
            hold = guard.breaker.hold()
            if hold is not None:
                blocked.append((name, hold))
                continue
            if last is not None:
                if not events.discard_text():
                    break  # text of the failed target went out: only a new attempt voids it
                self._fell_back(task, last.provider, name, last.error.type)
            elif blocked:
                skipped, held = blocked[-1]
                remaining = held.seconds if held.reason == PAUSED else None
                self._fell_back(task, skipped, name, held.reason, remaining)
            await guard.acquire()  # (plain calls: this runs for every task)
            try:
                call = guard.breaker.admit()
                if call is None:  # opened, paused or probing since, while this task waited
                    blocked.append((name, guard.breaker.hold() or Hold(CIRCUIT_OPEN, 0.0)))
                    continue
                events.provider, events.model = name, route.model
                if not begun:
                    begun = True
                    events.begin(at_once=attempt > 1)
                    began = time.monotonic()
                    if metrics is not None:
                        metrics.attempt_started(name, route.model, attempt, task.submitted_at)
                called = time.monotonic()
                outcome = await self._call(route, task, events, call)
                if metrics is not None:
                    error = None if isinstance(outcome, Finish) else outcome.error.type
                    metrics.provider_called(name, route.model, time.monotonic() - called, error)
            finally:
                guard.release()
            if isinstance(outcome, Finish):
                cost = self._prices.cost(name, route.model, outcome.usage)
                if cost is not None:
                    _current_span_attribute("orchestrator.task.cost_usd", cost)
                await events.succeeded(outcome.usage, outcome.finish_reason, cost)
                if metrics is not None:
                    metrics.task_succeeded(
                        name,
                        route.model,
                        outcome.usage,
                        cost,
                        run_seconds=time.monotonic() - began,
                        submitted_at=task.submitted_at,
                    )
                return delivery.ack
            if not outcome.retryable:
                await events.failed(outcome.error)
                if metrics is not None:
                    metrics.task_failed(
                        name,
                        route.model,
                        outcome.error.type,
                        run_seconds=time.monotonic() - began,
                        submitted_at=task.submitted_at,
                    )
                return delivery.ack
            last = outcome
        if last is None:
            return await self._defer(task, events, delivery, blocked)
        return await self._retry_later(task, events, delivery, last)

    def _fell_back(
        self, task: TaskMessage, old: str, new: str, reason: str, paused: float | None = None
    ) -> None:
        """Record a move to the next target (``paused``: the seconds left of ``old``'s
        pause, when that is why it was skipped)."""
        attributes: dict[str, Any] = {
            "orchestrator.from": old,
            "orchestrator.to": new,
            "error.type": reason,
        }
        if paused is not None:
            # The pause itself was logged once (breaker); its tasks go to traces and metrics.
            log.debug("task %s: %s -> %s (%s)", task.task_id, old, new, reason)
            attributes["orchestrator.pause.remaining"] = paused
        else:
            log.info("task %s: %s -> %s (%s)", task.task_id, old, new, reason)
        _span_event("orchestrator.fallback", attributes)
        self._hooks.fallback(old, new, reason)

    async def _retry_later(
        self, task: TaskMessage, events: AttemptEvents, delivery: Delivery, failure: _Failed
    ) -> _Settle:
        """A retryable failure: hand the task back with a backoff, or give up."""
        attempt = events.attempt
        if self._retry.exhausted(attempt):
            message = f"gave up after {attempt} attempt(s); the last one: {failure.error.message}"
            return await self._give_up(
                task, events, delivery, ErrorInfo(type=failure.error.type, message=message)
            )
        delay = self._retry.delay(attempt, hint=failure.retry_after, harder=failure.harder)
        await events.abandon()
        log.info(
            "task %s attempt %d failed (%s on %s); retrying in %.2f s",
            task.task_id,
            attempt,
            failure.error.type,
            failure.provider,
            delay,
        )
        _span_event(
            "orchestrator.retry",
            {
                "orchestrator.attempt": attempt,
                "orchestrator.retry.delay": delay,
                "orchestrator.retry.reason": failure.error.type,
                "orchestrator.provider": failure.provider,
                **(
                    {"orchestrator.retry.retry_after": failure.retry_after}
                    if failure.retry_after is not None
                    else {}
                ),
            },
        )
        self._hooks.retry_scheduled(failure.provider, failure.error.type, attempt, delay)
        return lambda: delivery.nack(delay)

    async def _defer(
        self,
        task: TaskMessage,
        events: AttemptEvents,
        delivery: Delivery,
        blocked: list[tuple[str, Hold]],
    ) -> _Settle:
        """Every target's circuit is open or its provider paused: hand the task back
        untried until the first of them takes calls again, or give up."""
        provider, hold = min(blocked, key=lambda item: item[1].seconds)
        paused = hold.reason == PAUSED
        attempt = events.attempt
        if self._retry.exhausted(attempt):
            breaker = self._guards[provider].breaker
            if paused:
                kind = breaker.paused_by or "rate_limit"
                message = (
                    f"gave up after {attempt} attempt(s): provider {provider} asked to wait "
                    f"({kind}) and is paused for {hold.seconds:.1f} s more"
                )
            else:
                kind = breaker.last_error or "unavailable"
                message = (
                    f"gave up after {attempt} attempt(s): provider {provider} keeps failing "
                    f"({kind}) and its circuit is open"
                )
            events.model = task.model
            error = ErrorInfo(type=kind, message=message)
            return await self._give_up(task, events, delivery, error)
        delay = self._retry.deferral(hold.seconds)
        # A paused provider was logged once, when it paused; its tasks only at DEBUG.
        log.log(
            logging.DEBUG if paused else logging.INFO,
            "task %s attempt %d: %s %s; handed back for %.2f s",
            task.task_id,
            attempt,
            provider,
            "paused" if paused else "circuit open",
            delay,
        )
        attributes: dict[str, Any] = {
            "orchestrator.attempt": attempt,
            "orchestrator.retry.delay": delay,
            "orchestrator.retry.reason": hold.reason,
            "orchestrator.provider": provider,
        }
        if paused:
            attributes["orchestrator.pause.remaining"] = hold.seconds
        _span_event("orchestrator.deferred", attributes)
        self._hooks.deferred(provider, delay, hold.reason)
        return lambda: delivery.nack(delay)

    async def _crashed_too_often(
        self, task: TaskMessage, events: AttemptEvents, delivery: Delivery
    ) -> _Settle:
        """A delivery past ``MAX_ATTEMPTS``: earlier attempts never reported an end."""
        limit = self._retry.max_attempts
        message = (
            f"gave up after {limit} attempt(s): the task was delivered {events.attempt} times "
            "and earlier attempts ended without a result (worker crash, lost lease or shutdown)"
        )
        events.model = task.model
        return await self._give_up(
            task, events, delivery, ErrorInfo(type="attempts_exhausted", message=message)
        )

    async def _give_up(
        self, task: TaskMessage, events: AttemptEvents, delivery: Delivery, error: ErrorInfo
    ) -> _Settle:
        """Tell the client (``failed``), then dead-letter the task with the reason."""
        reason = f"attempts exhausted ({events.attempt}): {error.type}: {error.message}"
        reason = reason[:_MAX_REASON]
        await events.failed(error)
        if self._metrics is not None:
            self._metrics.task_failed(
                events.provider, events.model, error.type, submitted_at=task.submitted_at
            )
        log.warning("task %s dead-lettered: %s", task.task_id, reason)
        _span_event(
            "orchestrator.attempts_exhausted",
            {"orchestrator.attempt": events.attempt, "error.type": error.type},
        )
        self._hooks.dead_lettered(reason, error.type)
        return lambda: delivery.dead_letter(reason)

    async def _call(
        self, route: Route, task: TaskMessage, events: AttemptEvents, call: BreakerCall
    ) -> Finish | _Failed:
        """Stream the answer into ``events``; the finish, or why there is none. Reports the
        outcome to the provider's circuit breaker."""
        name = route.provider.name
        request = CompletionRequest(
            model=route.model,
            messages=task.messages,
            parameters=task.parameters,
            task_id=task.task_id,
        )
        finish = Finish()
        try:
            with self._deadlines.start():  # asyncio.timeout, minus a timer per task
                stream = route.provider.stream(request)
                try:
                    async for item in stream:
                        if isinstance(item, str):
                            events.add(item)
                        else:
                            finish = item
                except BaseException:
                    await _aclose(stream)  # exhausted streams are closed already
                    raise
            call.succeeded()
        except ProviderError as exc:
            log.info("task %s: %s failed: %s: %s", task.task_id, name, exc.type, exc.message)
            if exc.retryable:
                call.failed(exc.type)
                if exc.retry_after is not None and _pauses_provider(exc):
                    self._pause(name, exc.retry_after, exc.type)
            elif exc.status is not None:
                call.succeeded()  # the provider is up: it answered, with a refusal
            return _Failed(
                provider=name,
                error=ErrorInfo(type=exc.type, message=exc.message),
                retryable=exc.retryable,
                retry_after=exc.retry_after,
                harder=isinstance(exc, Overloaded),
            )
        except TimeoutError:
            log.info("task %s: %s timed out after %g s", task.task_id, name, self._timeout)
            call.failed("timeout")
            return _Failed(
                provider=name,
                error=ErrorInfo(type="timeout", message=f"no answer within {self._timeout:g} s"),
                retryable=True,
            )
        except (BrokerError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("task %s: provider %s raised", task.task_id, name)
            return _Failed(
                provider=name,
                error=ErrorInfo(type="internal", message=f"{_CRASHED} ({type(exc).__name__})"),
                retryable=False,
            )
        finally:
            call.release()  # no verdict unless one was given above
        return finish

    def _pause(self, provider: str, seconds: float, error_type: str) -> None:
        """The provider asked for ``seconds`` without calls: pause it for every task (the
        breaker logs it and tells the hooks); the task that heard it records it."""
        lasts = self._guards[provider].breaker.pause(seconds, error_type)
        if lasts > 0:
            _span_event(
                "orchestrator.paused",
                {
                    "orchestrator.provider": provider,
                    "orchestrator.pause.seconds": lasts,
                    "error.type": error_type,
                },
            )

    async def _reject(self, delivery: Delivery, exc: InvalidTask) -> None:
        reason = f"invalid task: {exc.reason}"[:_MAX_REASON]
        if self._metrics is not None:
            self._metrics.task_rejected()
        log.warning("dead-lettering entry %s: %s", delivery.entry_id, reason)
        if exc.task_id is not None and exc.tenant is not None:
            events = AttemptEvents(
                self._broker,
                self._results,
                task_id=exc.task_id,
                tenant=exc.tenant,
                attempt=delivery.delivery_count,
                clock=self._clock,
            )
            try:
                await events.failed(ErrorInfo(type="invalid_task", message=reason))
            except BrokerError as err:
                log.warning("could not report invalid task %s: %s", exc.task_id, err)
        await self._settle(delivery, lambda: delivery.dead_letter(reason))

    async def _hand_back(self, delivery: Delivery, events: AttemptEvents) -> None:
        """On cancellation: give the task back for immediate redelivery (or ack a finished
        one), bounded in time because shutdown is waiting."""
        if delivery.settled:
            return
        try:
            async with asyncio.timeout(_HAND_BACK_TIMEOUT):
                if events.terminal_published:
                    await delivery.ack()
                else:
                    await delivery.nack(0)
                    if self._metrics is not None:
                        self._metrics.task_requeued("shutdown")
        except (BrokerError, TimeoutError) as exc:
            log.warning("could not hand back task %s: %s", events.task_id, exc)

    async def _settle(self, delivery: Delivery, settle: Callable[[], Awaitable[None]]) -> None:
        """Run ack/nack/dead-letter, retrying while the broker is briefly unavailable."""
        for wait in (*_SETTLE_BACKOFF, None):
            try:
                await settle()
                return
            except (AlreadySettled, LeaseLost) as exc:
                # Another consumer reclaimed it: that one reports the outcome.
                log.warning("entry %s was settled elsewhere: %s", delivery.entry_id, exc)
                return
            except BrokerUnavailable as exc:
                if wait is None:
                    # Left pending: other workers reclaim it once this process stops.
                    log.error("gave up settling entry %s: %s", delivery.entry_id, exc)
                    return
                await asyncio.sleep(wait)
            except BrokerError as exc:
                log.error("could not settle entry %s: %s", delivery.entry_id, exc)
                return


async def _aclose(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _span_event(name: str, attributes: dict[str, Any]) -> None:
    """A decision, as an event on the current span (the delivery's ``process`` span)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


def _current_span_attribute(key: str, value: Any) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(key, value)
