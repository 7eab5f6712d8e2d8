"""The Broker protocol: at-least-once delivery through consumer groups.

Every adapter (Redis Streams, in-memory) satisfies these two protocols, and one contract
suite (``tests/broker/test_contract.py``) holds each of them to the same behaviour.

A delivery's life is explicit. It is *pending* from the moment a consumer receives it until
it is settled exactly once by one of:

- ``ack()``: done, never delivered again;
- ``nack(delay)``: hand it back, to be redelivered after ``delay`` seconds; while it waits it
  belongs to no consumer and holds no worker slot;
- ``defer(delay)``: the same, except that the hand-back does not count as a delivery: the
  redelivery has the delivery count this one had. For a consumer that gave the entry back
  untried (it waits out something, such as a provider's pause); ``max_deliveries`` does not
  bound such waits, so the consumer must (the worker: by the task's deadline);
- ``dead_letter(reason)``: move it to ``<stream>:dead`` with the reason, atomically with the
  ack. Adapters keep the newest ``dead_letter_maxlen`` dead letters of a stream (default
  ``DEFAULT_DEAD_LETTER_MAXLEN``; 0 keeps all), so a storm of failures cannot fill memory.
  Operators read them back (``dead_letters``, oldest first, a page at a time), remove one
  once it has been dealt with (``remove_dead_letter``, e.g. after republishing it), or purge
  them by age (``purge_dead_letters``).

A pending delivery whose consumer stops renewing its lease (``extend_lease()``) for longer
than ``ConsumeOptions.lease`` is presumed dead and reclaimed by another consumer of the same
group, with its delivery count raised by one. After ``max_deliveries`` deliveries the broker
dead-letters an entry itself rather than hand it out again.

Besides streams, a broker keeps *presence*: members of a named group announce themselves with
a JSON payload under a TTL (``announce``), renew it by announcing again, and leave
(``withdraw``) or simply stop renewing; ``members`` lists only those whose TTL has not run
out. Workers use it to tell the API what they serve.

And *flags*: durable markers with a TTL in a named group, raised by one process and heard at
once by every process watching the group (``raise_flag``, ``raised_flags``,
``watch_flags``). A flag is raised durably before watchers hear of it, so a process that
registers interest first and then checks ``raised_flags`` never misses one; watchers need
one subscription per process, not one per flag. The API raises a task's cancel flag; a
worker checks it when it takes the task up and watches for the ones it runs.

*Fair publishing*: ``publish(stream, message, key=tenant, priority=...)`` does not append to
the stream but to a waiting room of ``stream``, per key and priority. Entries move from there
onto the stream only when a consumer asks for work (``consume`` dispatches as many as it
reads at once), chosen by weighted fair queuing across keys (stride scheduling: the key with
the smallest virtual time goes next, and pays ``1 / weight``), highest priority first within
a key, a ``low`` entry older than ``Fairness.aging`` competing as ``normal``. A key with
``Fairness.caps`` has at most that many entries dispatched and unsettled at once across all
consumers of the stream (counted under the lease, so a dead consumer's share returns once its
leases run out); while capped it is skipped, holding nothing. Once on the stream an entry is
an ordinary delivery: leases, reclaim, delivery counts and dead letters work as without a key;
a nacked or deferred keyed entry goes back to its key's waiting room (at the front of its
priority) once its delay is over. The waiting room belongs to the stream, not to a group:
use keys on work-queue streams with one consumer group, all of whose consumers pass the same
``Fairness``. Publishing without a key is unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping
from typing import Any, Final, Literal, Protocol, TypeAlias, runtime_checkable

import attrs

from .message import Message

#: Dead letters kept per stream unless configured otherwise: each holds its whole task (up to
#: the prompt size limit), and Redis runs ``noeviction``, so they must not grow without end.
DEFAULT_DEAD_LETTER_MAXLEN = 10_000


def dead_letter_stream(stream: str) -> str:
    """Where dead letters of ``stream`` go."""
    return f"{stream}:dead"


#: How urgent a keyed entry is within its key's share.
Priority: TypeAlias = Literal["high", "normal", "low"]
#: The priorities, most urgent first.
PRIORITIES: Final[tuple[Priority, ...]] = ("high", "normal", "low")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _weights(_: object, attribute: attrs.Attribute[Any], value: Mapping[str, float]) -> None:
    for key, weight in value.items():
        if not key or not weight > 0:
            raise ValueError(f"{attribute.name}: {key!r}={weight!r} needs a key and weight > 0")


def _caps(_: object, attribute: attrs.Attribute[Any], value: Mapping[str, int]) -> None:
    for key, cap in value.items():
        if not key or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"{attribute.name}: {key!r}={cap!r} needs a key and a cap >= 1")


def _frozen_map(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


@attrs.frozen
class Fairness:
    """How a consumer dispatches keyed entries (see the module docstring).

    ``weights`` and ``caps`` map a key to its weight (its share is proportional to it) and
    to its most entries running at once; the key ``"*"`` stands for every key not named
    (weight 1 and no cap unless given). ``aging``: seconds after which a ``low`` entry
    competes as ``normal``.
    """

    weights: Mapping[str, float] = attrs.field(
        factory=dict, converter=_frozen_map, validator=_weights
    )
    caps: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_map, validator=_caps)
    aging: float = attrs.field(default=60.0, validator=_positive)

    def weight(self, key: str) -> float:
        return self.weights.get(key, self.weights.get("*", 1.0))

    def cap(self, key: str) -> int | None:
        return self.caps.get(key, self.caps.get("*"))


@attrs.frozen
class ConsumeOptions:
    """How a consumer reads from its group.

    ``lease`` is how long a delivery may go without a lease extension before other consumers
    may reclaim it; ``auto_extend`` renews the lease of every unsettled delivery of this
    consumer every ``lease / 3`` seconds, so only a consumer that died (or hung its event loop)
    loses its deliveries. ``fairness`` says how keyed entries are dispatched (weights, caps,
    aging); every consumer of a stream must pass the same. A consumer with ``fairness``
    expects keyed entries: on Redis, an idle one is woken by the next keyed publish at once
    (one without waits for its next turn, up to ``block``, unless keyed entries were
    published before; it dispatches them with the default ``Fairness``).
    """

    batch_size: int = attrs.field(default=100, validator=_positive)
    block: float = attrs.field(default=2.0, validator=_positive)
    lease: float = attrs.field(default=30.0, validator=_positive)
    reclaim_interval: float | None = None
    max_deliveries: int = attrs.field(default=5, validator=_positive)
    auto_extend: bool = True
    fairness: Fairness | None = None

    @property
    def effective_reclaim_interval(self) -> float:
        """How often to look for deliveries whose lease ran out (default: ``lease / 2``)."""
        return self.reclaim_interval if self.reclaim_interval is not None else self.lease / 2


def entry_time(entry_id: str) -> float:
    """When an entry was written, in epoch seconds: the millisecond part of its id (a Redis
    stream id, ``<ms>-<seq>``, on the server's clock; 0.0 for an id that is not one)."""
    ms, _, _ = entry_id.partition("-")
    return int(ms) / 1000 if ms.isdigit() else 0.0


@attrs.frozen
class DeadLetter:
    """An entry moved to ``<stream>:dead``, as read back for inspection or replay.

    ``entry_id`` names the dead letter itself (what ``remove_dead_letter`` takes);
    ``original_entry_id`` the entry it was on the stream.
    """

    entry_id: str
    original_entry_id: str
    reason: str
    group: str
    delivery_count: int
    message: Message | None  # None when the original entry was corrupt or already deleted
    raw_fields: dict[str, str]

    @property
    def dead_at(self) -> float:
        """When it was dead-lettered (epoch seconds, from its entry id)."""
        return entry_time(self.entry_id)


@runtime_checkable
class Delivery(Protocol):
    """One message handed to one consumer, pending until settled."""

    @property
    def message(self) -> Message: ...

    @property
    def stream(self) -> str: ...

    @property
    def group(self) -> str: ...

    @property
    def entry_id(self) -> str:
        """The broker's id for this entry (a Redis stream id such as ``1700000000000-0``)."""
        ...

    @property
    def delivery_count(self) -> int:
        """1 on the first delivery; each reclaim or delayed redelivery adds one."""
        ...

    @property
    def settled(self) -> bool: ...

    async def ack(self) -> None:
        """Mark the delivery done. Raises ``AlreadySettled`` if it was settled before."""
        ...

    async def nack(self, delay: float = 0.0) -> None:
        """Give the delivery back, to be redelivered (count + 1) after ``delay`` seconds."""
        ...

    async def defer(self, delay: float) -> None:
        """Give the delivery back untried, to be redelivered after ``delay`` seconds with
        the same delivery count (it was not an attempt)."""
        ...

    async def dead_letter(self, reason: str) -> None:
        """Move the entry to ``<stream>:dead`` with ``reason``, atomically with the ack."""
        ...

    async def extend_lease(self) -> None:
        """Renew this consumer's claim. Raises ``LeaseLost`` if another consumer took it."""
        ...


@runtime_checkable
class Broker(Protocol):
    """Streams of messages read by consumer groups, with at-least-once delivery."""

    async def publish(
        self,
        stream: str,
        message: Message,
        *,
        key: str | None = None,
        priority: Priority = "normal",
    ) -> str:
        """Append ``message`` durably to ``stream``; returns its entry id.

        When this returns, the message is accepted (with Redis: written, and as durable as
        the server's ``appendfsync`` makes it). Raises ``BrokerUnavailable`` otherwise.
        With a ``key`` (a tenant) it goes to the stream's waiting room instead, to be
        dispatched fairly with ``priority`` (see the module docstring); the id returned then
        names it in the waiting room (the delivery gets a stream id of its own). Raises
        ``ValueError`` for an empty key or an unknown priority.
        """
        ...

    async def ensure_group(self, stream: str, group: str) -> None:
        """Create ``group`` on ``stream`` (and the stream) if missing; idempotent.

        A new group starts at the beginning of the stream, so nothing already published is
        skipped.
        """
        ...

    def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        options: ConsumeOptions | None = None,
    ) -> AsyncGenerator[Delivery, None]:
        """Deliveries for ``consumer`` as a member of ``group``, until ``close()``.

        In order: this consumer's own pending entries (a restarted consumer drains its own
        PEL first), entries reclaimed from dead consumers, then the rest of the stream. A
        nacked entry is delivered again no sooner than its delay; on Redis it then re-enters
        the stream behind the entries already waiting (the in-memory broker serves it
        first), so the contract promises the delay, not the position. Corrupt or foreign
        entries are dead-lettered with a reason, never yielded. Survives broker restarts
        (reconnecting with backoff) and a lost group (recreating it). Ends when the broker
        is closed or the iterator is closed (``aclose()``); deliveries already yielded stay
        the caller's to settle, and entries a read was fetching at that moment come back to
        the group once their lease runs out.
        """
        ...

    async def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle: float, count: int = 100
    ) -> list[Delivery]:
        """Claim for ``consumer`` the pending deliveries idle at least ``min_idle`` seconds.

        ``consume`` calls this on its own every ``reclaim_interval``; it is public for tools
        and tests.
        """
        ...

    async def pending_count(self, stream: str, group: str) -> int:
        """How many deliveries of ``group`` are pending (delivered, not yet settled)."""
        ...

    async def backlog(self, stream: str, group: str) -> int:
        """How many entries wait for ``group``: undelivered plus delayed (nacked) ones."""
        ...

    async def queue_depths(self, stream: str, group: str) -> dict[str, int]:
        """How many keyed entries of ``stream`` wait to be dispatched to ``group``, by
        priority: ``{"high": n, "normal": n, "low": n}`` (always all three; nacked ones
        waiting out a delay included, an aged ``low`` entry still counted as ``low``).
        Entries already on the stream, and unkeyed ones, are in ``backlog`` only. O(1)."""
        ...

    async def waiting_keys(self, stream: str, top: int = 10) -> dict[str, int]:
        """The ``top`` keys with the most keyed entries waiting on ``stream`` (as
        ``queue_depths`` counts them), with their counts, most first; keys with none are
        absent. Raises ``ValueError`` unless ``top >= 1``. O(log keys + top) on Redis."""
        ...

    async def dead_letters(
        self, stream: str, count: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        """The oldest ``count`` entries of ``<stream>:dead`` (those after the dead letter
        ``after``, when given: pass the last ``entry_id`` of a page to read the next)."""
        ...

    async def remove_dead_letter(self, stream: str, entry_id: str) -> bool:
        """Delete the dead letter ``entry_id`` of ``stream``; False if there was none (already
        removed, trimmed, or never there). Nothing else changes."""
        ...

    async def purge_dead_letters(self, stream: str, older_than: float | None = None) -> int:
        """Delete the dead letters of ``stream`` written more than ``older_than`` seconds ago
        (by the broker's clock; all of them when None); returns how many went. Raises
        ``ValueError`` for a negative ``older_than``."""
        ...

    async def announce(
        self, group: str, member: str, payload: Mapping[str, Any], ttl: float
    ) -> None:
        """Make ``member`` of presence ``group`` alive for ``ttl`` seconds with ``payload``
        (JSON-compatible), replacing any payload and expiry it had: call it again before the
        TTL runs out to stay alive. Raises ``ValueError`` for a ``ttl`` that is not positive,
        ``TypeError`` for a payload that is not JSON, ``BrokerUnavailable`` when the broker
        cannot be reached.
        """
        ...

    async def withdraw(self, group: str, member: str) -> None:
        """Remove ``member`` from presence ``group`` at once (nothing if it is not there)."""
        ...

    async def members(self, group: str) -> dict[str, dict[str, Any]]:
        """The members of presence ``group`` whose TTL has not run out, with their payloads
        (copies: changing them changes nothing in the broker)."""
        ...

    async def raise_flag(self, group: str, name: str, ttl: float) -> None:
        """Raise flag ``name`` of ``group`` for ``ttl`` seconds (raising it again renews the
        TTL), then tell every ``watch_flags`` of the group. When this returns, the flag is
        stored. Raises ``ValueError`` for an empty name or a bad TTL, ``BrokerUnavailable``
        when the broker cannot be reached.
        """
        ...

    async def raised_flags(self, group: str, names: Collection[str]) -> set[str]:
        """Which of ``names`` are raised in ``group`` (their TTL not run out), in one call."""
        ...

    def watch_flags(self, group: str) -> AsyncGenerator[str, None]:
        """The names of the flags raised in ``group`` from now on, as they are raised, until
        ``close()`` or ``aclose()``. It yields ``SUBSCRIBED`` (the empty string) once it is
        subscribed, and again after each reconnection: flags raised while it was not may be
        missed, and ``raised_flags`` tells. A flag raised twice may be heard twice.
        """
        ...

    async def ping(self) -> None:
        """Check the broker answers; raises ``BrokerUnavailable`` if not."""
        ...

    async def close(self) -> None:
        """Stop every consumer iterator and release connections; idempotent."""
        ...
