"""One task delivery, start to finish: parse, call the provider, publish events, settle.

The outcomes, and how the delivery is settled:

- the payload is not a ``TaskMessage``: dead-lettered with the reason (and, when it names a
  task id and tenant, a ``failed`` event of type ``invalid_task`` is published first, so the
  client does not wait for a task that will never run);
- unknown model: ``failed`` (``invalid_model``), ack;
- the provider answers: ``started``, deltas, ``succeeded``, ack (no ``started`` for an
  answer that takes under a second and streams no delta: see ``events``);
- the provider raises ``ProviderError``: [``started``, deltas], ``failed`` (its ``type``), ack
  (retrying retryable errors with ``nack(delay)`` comes next);
- no answer within ``TASK_TIMEOUT_SECONDS``: ``started``, deltas, ``failed`` (``timeout``),
  ack;
- any other exception, in the provider or in the worker itself: ``failed`` (``internal``,
  with a message naming at most the exception class: no text, no traceback, which go to the
  log), ack;
- the broker refuses an event: the attempt is abandoned and handed back with ``nack(1 s)``,
  to run again as the next attempt;
- the worker shuts down past its grace period (the handler is cancelled): handed back with
  ``nack(0)`` for immediate redelivery, or acked if its terminal event was already out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from orchestrator_broker import (
    AlreadySettled,
    Broker,
    BrokerError,
    BrokerUnavailable,
    Delivery,
    LeaseLost,
)

from .events import AttemptEvents, FlushClock
from .messages import ErrorInfo, TaskMessage
from .providers import CompletionRequest, Finish, ProviderError, ProviderRegistry, Route

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


class InvalidTask(ValueError):
    """A task payload that cannot be a ``TaskMessage``; carries what could be salvaged."""

    def __init__(self, reason: str, task_id: str | None = None, tenant: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.task_id = task_id
        self.tenant = tenant


def parse_task(payload: Any) -> TaskMessage:
    """The task in a tasks-stream payload; raises ``InvalidTask`` with a short reason."""
    if not isinstance(payload, dict):
        raise InvalidTask(f"payload is a JSON {type(payload).__name__}, not an object")
    task_id, tenant = payload.get("task_id"), payload.get("tenant")
    salvage: dict[str, str | None] = {
        "task_id": task_id if isinstance(task_id, str) and task_id else None,
        "tenant": tenant if isinstance(tenant, str) else None,
    }
    # cattrs would turn 123 or None into "123"/"None" for a str field: check those first.
    for name in ("task_id", "tenant", "prompt"):
        if not isinstance(payload.get(name), str):
            raise InvalidTask(f"{name} is missing or not a string", **salvage)
    if not task_id:
        raise InvalidTask("task_id is empty", **salvage)
    for name in ("model", "system"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            raise InvalidTask(f"{name} is not a string", **salvage)
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidTask("parameters is not an object", **salvage)
    submitted_at = payload.get("submitted_at")
    if submitted_at is not None and (
        isinstance(submitted_at, bool) or not isinstance(submitted_at, int | float)
    ):
        raise InvalidTask("submitted_at is not a number", **salvage)
    # Built by hand rather than by cattrs: this runs for every task, and every field is
    # checked above (a test keeps this in step with TaskMessage's fields).
    return TaskMessage(
        task_id=task_id,
        tenant=payload["tenant"],
        prompt=payload["prompt"],
        model=payload.get("model"),
        system=payload.get("system"),
        parameters=parameters if parameters is not None else {},
        submitted_at=float(submitted_at) if submitted_at is not None else 0.0,
    )


#: The TaskMessage fields ``parse_task`` reads; unknown extra fields are ignored.
PARSED_FIELDS = frozenset(
    {"task_id", "tenant", "prompt", "model", "system", "parameters", "submitted_at"}
)


class TaskRunner:
    """Runs deliveries of the tasks stream; shared by every task of a worker."""

    def __init__(
        self,
        broker: Broker,
        providers: ProviderRegistry,
        *,
        results_stream: str,
        task_timeout: float,
        flush_interval: float,
        started_after: float = 1.0,
    ) -> None:
        self._broker = broker
        self._providers = providers
        self._results = results_stream
        self._timeout = task_timeout
        self._clock = FlushClock(flush_interval, started_after)

    async def handle(self, delivery: Delivery) -> None:
        """Run one delivery to its end and settle it; raises nothing but ``CancelledError``."""
        try:
            task = parse_task(delivery.message.payload)
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
        try:
            await self._attempt(task, events)
        except BrokerError as exc:
            log.warning(
                "task %s attempt %d abandoned, the broker refused an event: %s",
                task.task_id,
                events.attempt,
                exc,
            )
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
        finally:
            events.close()
        await self._settle(delivery, delivery.ack)

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
        return True

    async def _attempt(self, task: TaskMessage, events: AttemptEvents) -> None:
        try:
            route = self._providers.resolve(task.model)
        except ProviderError as exc:
            events.model = task.model
            await events.failed(ErrorInfo(type=exc.type, message=exc.message))
            return
        events.provider, events.model = route.provider.name, route.model
        events.begin()
        outcome = await self._call(route, task, events)
        if isinstance(outcome, Finish):
            await events.succeeded(outcome.usage, outcome.finish_reason)
        else:
            await events.failed(outcome)

    async def _call(
        self, route: Route, task: TaskMessage, events: AttemptEvents
    ) -> Finish | ErrorInfo:
        """Stream the answer into ``events``; the finish, or the error to report."""
        request = CompletionRequest(
            model=route.model,
            prompt=task.prompt,
            system=task.system,
            parameters=task.parameters,
            task_id=task.task_id,
        )
        finish = Finish()
        try:
            async with asyncio.timeout(self._timeout):
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
        except ProviderError as exc:
            log.info("task %s failed: %s: %s", task.task_id, exc.type, exc.message)
            return ErrorInfo(type=exc.type, message=exc.message)
        except TimeoutError:
            log.info("task %s timed out after %g s", task.task_id, self._timeout)
            return ErrorInfo(type="timeout", message=f"no answer within {self._timeout:g} s")
        except (BrokerError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("task %s: provider %s raised", task.task_id, route.provider.name)
            return ErrorInfo(type="internal", message=f"{_CRASHED} ({type(exc).__name__})")
        return finish

    async def _reject(self, delivery: Delivery, exc: InvalidTask) -> None:
        reason = f"invalid task: {exc.reason}"[:_MAX_REASON]
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
