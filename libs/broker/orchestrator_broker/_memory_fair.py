"""The in-memory broker's waiting room for keyed entries: the same scheduling as the Redis
adapter's dispatch script (``_redis_fair``), kept in process.

Per key three FIFO queues (one per priority) and a virtual time ("pass"); a heap of the keys
with dispatchable work ordered by pass (stride scheduling: the smallest goes next and pays
``1 / weight``; a key becoming ready again starts at ``max(its pass, the virtual time)``, so
an idle key banks no credit). A key at its cap leaves the heap and is checked again at each
dispatch (O(capped keys) here; the Redis adapter keeps them in a ZSET by lease expiry).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable

import attrs

from .protocol import PRIORITIES, Fairness, Priority

_Fields = dict[bytes | str, bytes | str]


@attrs.define(eq=False)
class WaitingEntry:
    """A keyed entry waiting for dispatch: its fields (none of the ``fair_*`` or
    ``prior_deliveries`` ones), deliveries made so far, and when it first arrived."""

    fields: _Fields
    prior: int
    key: str
    priority: Priority
    enqueued_ms: int


@attrs.define(eq=False)
class _Key:
    queues: tuple[deque[WaitingEntry], ...] = attrs.field(
        factory=lambda: tuple(deque() for _ in PRIORITIES)
    )
    pass_: float = 0.0
    ready: bool = False

    def waiting(self) -> bool:
        return any(self.queues)

    def take(self, now_ms: int, aging_ms: int) -> WaitingEntry:
        high, normal, low = self.queues
        if high:
            return high.popleft()
        aged = bool(low) and low[0].enqueued_ms <= now_ms - aging_ms
        if aged and (not normal or low[0].enqueued_ms < normal[0].enqueued_ms):
            return low.popleft()
        return normal.popleft() if normal else low.popleft()


@attrs.define(eq=False)
class WaitingRoom:
    """One stream's keyed entries not yet dispatched (and nacked ones waiting their delay)."""

    keys: dict[str, _Key] = attrs.field(factory=dict)
    heap: list[tuple[float, int, str]] = attrs.field(factory=list)
    capped: set[str] = attrs.field(factory=set)
    delayed: list[tuple[float, int, WaitingEntry]] = attrs.field(factory=list)
    vt: float = 0.0
    count: int = 0  # waiting plus delayed
    depths: Counter[str] = attrs.field(factory=Counter)  # the same by priority
    per_key: Counter[str] = attrs.field(factory=Counter)  # the same by key
    _seq: itertools.count[int] = attrs.field(factory=itertools.count)

    def push(self, entry: WaitingEntry, *, front: bool = False) -> None:
        state = self.keys.get(entry.key)
        if state is None:
            state = self.keys[entry.key] = _Key()
        queue = state.queues[PRIORITIES.index(entry.priority)]
        if front:
            queue.appendleft(entry)
        else:
            queue.append(entry)
        self._count(entry, 1)
        if not state.ready and entry.key not in self.capped:
            self._ready(entry.key, state)

    def delay(self, entry: WaitingEntry, due: float) -> None:
        """Hold ``entry`` until ``due`` (monotonic), then put it back at its queue's front."""
        heapq.heappush(self.delayed, (due, next(self._seq), entry))
        self._count(entry, 1)

    def next_due(self) -> float | None:
        return self.delayed[0][0] if self.delayed else None

    def dispatch(self, fairness: Fairness, running: Callable[[str], int]) -> WaitingEntry | None:
        """The next entry by fair share and priority, or None (nothing waiting, or every
        waiting key at its cap). ``running(key)``: the key's entries running now."""
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, entry = heapq.heappop(self.delayed)
            self._count(entry, -1)
            self.push(entry, front=True)
        for key in list(self.capped):
            cap = fairness.cap(key)
            if cap is None or running(key) < cap:
                self.capped.discard(key)
                state = self.keys.get(key)
                if state is not None and state.waiting():
                    self._ready(key, state)
        now_ms = int(time.time() * 1000)
        aging_ms = round(fairness.aging * 1000)
        while self.heap:
            pass_, _, key = heapq.heappop(self.heap)
            state = self.keys[key]
            if not state.ready or state.pass_ != pass_:
                continue  # a stale heap entry
            cap = fairness.cap(key)
            if cap is not None and running(key) >= cap:
                state.ready = False
                self.capped.add(key)
                continue
            entry = state.take(now_ms, aging_ms)
            self._count(entry, -1)
            self.vt = pass_
            state.pass_ = pass_ + 1 / fairness.weight(key)
            if state.waiting():
                heapq.heappush(self.heap, (state.pass_, next(self._seq), key))
            else:
                state.ready = False
            return entry
        return None

    def top_keys(self, top: int) -> dict[str, int]:
        """The ``top`` keys with the most entries waiting or delayed, most first."""
        return dict(self.per_key.most_common(top))

    def _count(self, entry: WaitingEntry, delta: int) -> None:
        self.count += delta
        self.depths[entry.priority] += delta
        self.per_key[entry.key] += delta
        if self.per_key[entry.key] <= 0:
            del self.per_key[entry.key]

    def _ready(self, key: str, state: _Key) -> None:
        state.pass_ = max(state.pass_, self.vt)
        state.ready = True
        heapq.heappush(self.heap, (state.pass_, next(self._seq), key))
