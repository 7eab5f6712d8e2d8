"""One task delivery, start to finish: parse, call the provider, publish events, settle.

How each outcome is settled (ack, retry after a delay, defer, or fail and dead-letter) is
decided by ``fault_policy``, which is pure; this module does the I/O around it:

- it decodes the payload (``decode_task``); a payload that is not a task is dead-lettered,
  after a ``failed``/``invalid_task`` event when it names a task id and tenant, so the
  client does not wait for a task that will never run;
- it calls the task's targets in turn: the model, or an alias's targets. A target whose
  circuit is open or whose provider is paused (``breaker``) is skipped. After a retryable
  failure, the next target is tried at once, within the same attempt, if none of this
  attempt's text went out in a delta yet (the result's ``provider``/``model`` say who
  answered); otherwise the attempt ends there;
- it streams the answer into ``events`` (``started``, deltas, then ``succeeded`` with
  ``cost_usd`` from the price table; no ``started`` for a first attempt that takes under a
  second and streams no delta), bounding each call by ``TASK_TIMEOUT_SECONDS`` and by what is
  left of the task's deadline (``TASK_DEADLINE_SECONDS`` after its submission: a task past
  it fails as ``deadline_exceeded`` without another call);
- it tells each provider's circuit breaker how its calls went, and pauses a provider that
  asked to wait (a 429, 529 or 503 carrying ``Retry-After`` or rate-limit reset headers) for
  every task of this process, so that other tasks do not collect the same rate limit;
- it publishes the ``failed`` event the decision names, ends a retried attempt with no
  terminal event (the next attempt's ``started`` tells streaming clients to drop this one's
  text), and settles the delivery, retrying the settle while the broker is briefly
  unavailable. On cancellation (shutdown past its grace period) it hands the delivery back
  within a few seconds.

A task its client cancelled (``cancels``) is checked when the delivery arrives and before
each call: it publishes ``cancelled`` (with the text answered so far) and is acked, never
retried; a call in progress when the cancel comes is interrupted, which closes the HTTP
stream to the provider.

Any other exception, in the provider or in the worker itself, fails the task as
``internal``, with a message naming at most the exception class: no text, no traceback,
which go to the log. Each decision is a span event on the delivery's ``process`` span
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
from .cancels import Abort, Cancels
from .events import AttemptEvents, FlushClock
from .fault_policy import (
    ANSWERED,
    DEADLINE_EXCEEDED,
    Aborted,
    Action,
    Blocked,
    BrokerRefused,
    Cancelled,
    Crashed,
    Deadline,
    Decision,
    Expired,
    Failed,
    Invalid,
    Overdelivered,
    Refused,
    call_crashed,
    decide,
    from_provider_error,
    pauses_provider,
    timed_out,
)
from .hooks import WorkerHooks, safe_hooks
from .limits import ProviderGuards
from .metrics import WorkerMetrics
from .pricing import PriceTable
from .providers import (
    CompletionRequest,
    Finish,
    ProviderError,
    ProviderRegistry,
    Route,
)
from .retry import RetryPolicy
from .routing import ModelRouter

log = logging.getLogger(__name__)

#: Waits between attempts to settle a delivery while the broker is unavailable: about a
#: minute in all, enough for a Redis restart or failover. The task's slot stays taken
#: meanwhile, which is right: this worker cannot take new tasks from a broker it cannot reach.
_SETTLE_BACKOFF = (0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0, 10.0, 10.0, 10.0)
#: How long a cancelled handler may take to hand its delivery back.
_HAND_BACK_TIMEOUT = 5.0


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
        task_deadline: float | None = None,
        started_after: float = 1.0,
        router: ModelRouter | None = None,
        retry: RetryPolicy | None = None,
        guards: ProviderGuards | None = None,
        prices: PriceTable | None = None,
        hooks: WorkerHooks | None = None,
        metrics: WorkerMetrics | None = None,
        cancels: Cancels | None = None,
    ) -> None:
        self._broker = broker
        self._cancels = cancels
        self._providers = providers
        self._results = results_stream
        self._timeout = task_timeout
        self._deadline = task_deadline if task_deadline is not None else 3 * task_timeout
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
            prior_attempts=task.prior_attempts,
            deltas=task.deltas,
        )
        abort = self._cancels.register(task.task_id) if self._cancels is not None else None
        try:
            decision = await self._attempt(task, events, abort)
        except BrokerError as exc:
            log.warning(
                "task %s attempt %d abandoned, the broker refused an event: %s",
                task.task_id,
                events.attempt,
                exc,
            )
            if self._metrics is not None:
                self._metrics.task_requeued("broker_error")
            decision = decide(BrokerRefused(), events.attempt, self._retry)
        except asyncio.CancelledError:
            await self._hand_back(delivery, events)
            raise
        except Exception:
            # A bug outside the provider call: report the task failed rather than leave the
            # delivery unsettled (its lease would be renewed for as long as we run).
            log.exception("task %s attempt %d crashed", task.task_id, events.attempt)
            decision = await self._report_crash(events)
        finally:
            events.close()
            if abort is not None and self._cancels is not None:
                self._cancels.unregister(abort)
        await self._settle(delivery, decision)

    async def _report_crash(self, events: AttemptEvents) -> Decision:
        """Publish ``failed``/``internal`` unless a terminal event is out; if that cannot
        be done, the delivery is handed back to run again."""
        decision = decide(Crashed(events.terminal_published), events.attempt, self._retry)
        if decision.error is None:
            return decision
        try:
            await events.failed(decision.error)
        except Exception as exc:
            log.warning("could not report the crash of task %s: %s", events.task_id, exc)
            return decide(BrokerRefused(), events.attempt, self._retry)
        if self._metrics is not None:
            self._metrics.task_failed(events.provider, events.model, decision.error.type)
        return decision

    def deadline(self, task: TaskMessage) -> Deadline | None:
        """``task``'s deadline as it stands now (None: the task says not when it was
        submitted, so no deadline is known)."""
        if task.submitted_at <= 0:
            return None
        return Deadline(self._deadline, task.submitted_at + self._deadline - time.time())

    async def _attempt(
        self, task: TaskMessage, events: AttemptEvents, abort: Abort | None = None
    ) -> Decision:
        """Run this attempt: its targets in turn until one answers; how to settle."""
        attempt = events.attempt
        retry = self._retry
        if abort is not None and await self._cancel_requested(abort, task.submitted_at):
            events.model = task.model
            return await self._cancel(task, events, None)
        if attempt > retry.max_attempts:
            events.model = task.model
            return await self._give_up(task, events, decide(Overdelivered(), attempt, retry))
        deadline = self.deadline(task)
        if deadline is not None and deadline.passed:
            events.model = task.model
            return await self._give_up(task, events, decide(Expired(), attempt, retry, deadline))
        try:
            routes = self._router.routes(task.model, task.parameters)
        except ProviderError as exc:
            events.model = task.model
            unknown = Refused(ErrorInfo(type=exc.type, message=exc.message))
            decision = decide(unknown, attempt, retry)
            error = _failure(decision)
            await events.failed(error)
            if self._metrics is not None:  # the model name is the client's: not a label
                self._metrics.task_failed(None, None, error.type, submitted_at=task.submitted_at)
            return decision
        last: Failed | None = None  # the last target that failed retryably
        blocked: list[tuple[str, Hold]] = []  # providers skipped: open circuit or paused
        begun = False
        began = 0.0  # monotonic start of the first call of this attempt
        metrics = self._metrics
        for route in routes:
            if abort is not None and abort.requested:
                return await self._cancel(task, events, began if begun else None)
            name = route.provider.name
            timeout = self._timeout
            if deadline is not None:
                deadline = self.deadline(task)
                assert deadline is not None
                if deadline.passed:  # a failed target before this one took the rest
                    return await self._give_up(
                        task, events, decide(Expired(), attempt, retry, deadline)
                    )
                timeout = min(timeout, deadline.remaining)
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
                    # Any attempt after the task's first (a replayed task's too) voids what
                    # clients hold of the one before: its ``started`` goes out at once.
                    events.begin(at_once=events.number > 1)
                    began = time.monotonic()
                    if metrics is not None:
                        metrics.attempt_started(
                            name, route.model, events.number, task.submitted_at, task.priority
                        )
                called = time.monotonic()
                outcome = await self._call(route, task, events, call, timeout, abort)
                if metrics is not None:
                    failure = _failure_type(outcome)
                    metrics.provider_called(name, route.model, time.monotonic() - called, failure)
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
                return decide(ANSWERED, attempt, retry)
            if isinstance(outcome, Refused):
                decision = decide(outcome, attempt, retry)
                error = _failure(decision)
                await events.failed(error)
                if metrics is not None:
                    metrics.task_failed(
                        name,
                        route.model,
                        error.type,
                        run_seconds=time.monotonic() - began,
                        submitted_at=task.submitted_at,
                    )
                return decision
            if isinstance(outcome, Expired):
                decision = decide(outcome, attempt, retry, self.deadline(task))
                return await self._give_up(task, events, decision)
            if isinstance(outcome, Aborted):
                return await self._cancel(task, events, began)
            last = outcome
        if last is None:
            return await self._defer(task, events, blocked)
        return await self._retry_later(task, events, last)

    async def _cancel_requested(self, abort: Abort, submitted_at: float) -> bool:
        """Whether the task was cancelled before it started (its flag, checked once)."""
        if abort.requested:
            return True
        cancels = self._cancels
        return cancels is not None and await cancels.cancelled(abort.task_id, submitted_at)

    async def _cancel(
        self, task: TaskMessage, events: AttemptEvents, began: float | None
    ) -> Decision:
        """The client cancelled the task: ``cancelled`` with the text so far, then ack."""
        await events.cancelled()
        _span_event("orchestrator.cancelled", {"orchestrator.attempt": events.attempt})
        if self._metrics is not None:
            run = time.monotonic() - began if began is not None else None
            self._metrics.task_cancelled(run_seconds=run, submitted_at=task.submitted_at)
        return decide(Aborted(), events.attempt, self._retry)

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
        self, task: TaskMessage, events: AttemptEvents, failure: Failed
    ) -> Decision:
        """A retryable failure: hand the task back with a backoff, or give up."""
        attempt = events.attempt
        decision = decide(failure, attempt, self._retry, self.deadline(task))
        if decision.action is Action.DEAD_LETTER:
            return await self._give_up(task, events, decision)
        delay = decision.delay
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
        return decision

    async def _defer(
        self, task: TaskMessage, events: AttemptEvents, blocked: list[tuple[str, Hold]]
    ) -> Decision:
        """Every target's circuit is open or its provider paused: hand the task back
        untried until the first of them takes calls again, or give up."""
        provider, hold = min(blocked, key=lambda item: item[1].seconds)
        breaker = self._guards[provider].breaker
        paused = hold.reason == PAUSED
        cause = breaker.paused_by if paused else breaker.last_error
        attempt = events.attempt
        blocked_by = Blocked(provider, hold.reason, hold.seconds, cause)
        decision = decide(blocked_by, attempt, self._retry, self.deadline(task))
        if decision.action is Action.DEAD_LETTER:
            events.model = task.model
            return await self._give_up(task, events, decision)
        delay = decision.delay
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
        return decision

    async def _give_up(
        self, task: TaskMessage, events: AttemptEvents, decision: Decision
    ) -> Decision:
        """Tell the client (``failed``), then dead-letter the task with the reason."""
        error = _failure(decision)
        reason = decision.reason or error.type
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
        return decision

    async def _call(
        self,
        route: Route,
        task: TaskMessage,
        events: AttemptEvents,
        call: BreakerCall,
        timeout: float,
        abort: Abort | None = None,
    ) -> Finish | Failed | Refused | Expired | Aborted:
        """Stream the answer into ``events`` within ``timeout`` seconds; the finish, or why
        there is none. Reports the outcome to the provider's circuit breaker. A call cut
        short by the task's deadline (``timeout`` less than ``TASK_TIMEOUT_SECONDS``) is
        ``Expired``, and tells the breaker nothing: the provider did not fail; so is a call
        its client cancelled (``Aborted``): the stream to the provider is closed."""
        name = route.provider.name
        request = CompletionRequest(
            model=route.model,
            messages=task.messages,
            parameters=task.parameters,
            task_id=task.task_id,
        )
        finish = Finish()
        if abort is not None:
            abort.enter_call()
        try:
            async with asyncio.timeout(timeout):
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
                if exc.retry_after is not None and pauses_provider(exc):
                    self._pause(name, exc.retry_after, exc.type)
            elif exc.status is not None:
                call.succeeded()  # the provider is up: it answered, with a refusal
            return from_provider_error(name, exc)
        except TimeoutError:
            if timeout < self._timeout:
                log.info("task %s: its deadline passed during the call to %s", task.task_id, name)
                return Expired(name)
            log.info("task %s: %s timed out after %g s", task.task_id, name, self._timeout)
            call.failed("timeout")
            return timed_out(name, self._timeout)
        except asyncio.CancelledError:
            if abort is not None and abort.took_cancel():
                log.info("task %s: the call to %s stopped: cancelled", task.task_id, name)
                return Aborted()
            raise
        except BrokerError:
            raise
        except Exception as exc:
            log.exception("task %s: provider %s raised", task.task_id, name)
            return call_crashed(exc)
        finally:
            if abort is not None:
                abort.leave_call()
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
        decision = decide(Invalid(exc.reason), delivery.delivery_count, self._retry)
        error = _failure(decision)
        if self._metrics is not None:
            self._metrics.task_rejected()
        log.warning("dead-lettering entry %s: %s", delivery.entry_id, decision.reason)
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
                await events.failed(error)
            except BrokerError as err:
                log.warning("could not report invalid task %s: %s", exc.task_id, err)
        await self._settle(delivery, decision)

    async def _hand_back(self, delivery: Delivery, events: AttemptEvents) -> None:
        """On cancellation: give the task back for immediate redelivery (or ack a finished
        one), bounded in time because shutdown is waiting."""
        if delivery.settled:
            return
        decision = decide(Cancelled(events.terminal_published), events.attempt, self._retry)
        try:
            async with asyncio.timeout(_HAND_BACK_TIMEOUT):
                if decision.action is Action.ACK:
                    await delivery.ack()
                else:
                    await delivery.nack(decision.delay)
                    if self._metrics is not None:
                        self._metrics.task_requeued("shutdown")
        except (BrokerError, TimeoutError) as exc:
            log.warning("could not hand back task %s: %s", events.task_id, exc)

    async def _settle(self, delivery: Delivery, decision: Decision) -> None:
        """Carry out ``decision`` (ack, nack or dead-letter), retrying while the broker is
        briefly unavailable."""
        settle = _settlement(delivery, decision)
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


def _settlement(delivery: Delivery, decision: Decision) -> _Settle:
    """The settling call that carries out ``decision``, ready to run (and re-run)."""
    action = decision.action
    if action is Action.ACK:
        return delivery.ack
    if action is Action.DEAD_LETTER:
        reason = decision.reason or ""
        return lambda: delivery.dead_letter(reason)
    delay = decision.delay
    if action is Action.DEFER:  # handed back untried: not an attempt
        return lambda: delivery.defer(delay)
    return lambda: delivery.nack(delay)


def _failure_type(outcome: Finish | Failed | Refused | Expired | Aborted) -> str | None:
    """The error type of a call's outcome, for metrics (None: it answered)."""
    if isinstance(outcome, Finish):
        return None
    if isinstance(outcome, Aborted):
        return "cancelled"
    if isinstance(outcome, Expired):
        return DEADLINE_EXCEEDED
    return outcome.error.type


def _failure(decision: Decision) -> ErrorInfo:
    """The ``failed`` event's error of a decision that has one."""
    if decision.error is None:
        raise AssertionError(f"{decision!r} publishes no failed event")
    return decision.error


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
