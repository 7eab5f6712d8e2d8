"""What only the Redis task store has: replicas, outages, the subscriber connection, scripts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from orchestrator_api.model import StoredEvent, TaskRecord, TaskStatus
from orchestrator_api.store import IdempotencyKeyInUse, RedisTaskStore, StoreUnavailable
from orchestrator_api.store import redis as redis_store
from tests.api.test_store import delta, failed, new_record, started, succeeded, summary
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

HANG = 20.0


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[Callable[..., RedisTaskStore]]:
    """Make RedisTaskStores (each one an API replica); all closed at teardown."""
    made: list[RedisTaskStore] = []

    def make(url: str = redis_url, subscription_linger: float = 5.0) -> RedisTaskStore:
        store = RedisTaskStore.from_url(
            url, ttl_seconds=60, subscription_linger=subscription_linger
        )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def pubsub_clients(url: str) -> int:
    async with aioredis.Redis.from_url(url) as client:
        clients = await client.client_list()
    return sum(1 for c in clients if int(c.get("sub", 0)) > 0)


async def test_a_reader_on_one_replica_wakes_on_an_event_applied_by_another(
    stores: Callable[..., RedisTaskStore],
) -> None:
    serving, applying = stores(), stores()
    record = new_record()
    await serving.create(record)

    waiting = asyncio.create_task(serving.events("acme", record.id, after="1", timeout=HANG))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await applying.apply(started(record))

    async with asyncio.timeout(HANG):
        assert summary(await waiting) == [("status", ("running", 1))]


async def test_thousands_of_readers_share_one_subscriber_connection(
    stores: Callable[..., RedisTaskStore], redis_url: str
) -> None:
    serving, applying = stores(), stores()
    records = [new_record() for _ in range(300)]
    for record in records:
        await serving.create(record)
    readers = [
        asyncio.create_task(serving.events("acme", r.id, after="1", timeout=HANG)) for r in records
    ]
    await asyncio.sleep(0.2)

    assert await pubsub_clients(redis_url) == 1
    for record in records:
        await applying.apply(started(record))
    async with asyncio.timeout(HANG):
        results = await asyncio.gather(*readers)
    assert all(summary(r) == [("status", ("running", 1))] for r in results)


async def numsub(url: str, channel: str) -> int:
    async with aioredis.Redis.from_url(url) as client:
        return int(dict(await client.pubsub_numsub(channel))[channel.encode()])


async def test_a_subscription_outlives_its_reader_briefly_then_goes(
    stores: Callable[..., RedisTaskStore], redis_url: str
) -> None:
    store = stores(subscription_linger=0.3)
    record = new_record()
    await store.create(record)
    channel = f"orchestrator:task:{record.id}:wake"

    assert await store.events("acme", record.id, after="1", timeout=0.05) == []
    assert await numsub(redis_url, channel) == 1  # lingering for the next events() call

    async with asyncio.timeout(HANG):
        while True:
            if await numsub(redis_url, channel) == 0:
                break
            await asyncio.sleep(0.05)


async def test_each_subscription_lingers_its_own_time_after_its_reader(
    stores: Callable[..., RedisTaskStore], redis_url: str
) -> None:
    """Channels leave in the order they went idle, each ``linger`` after its last reader:
    the sweep that unsubscribes the first leaves the one that went idle later."""
    store = stores(subscription_linger=2.0)
    early, late = new_record(), new_record()
    await store.create(early)
    await store.create(late)
    early_channel = f"orchestrator:task:{early.id}:wake"
    late_channel = f"orchestrator:task:{late.id}:wake"

    assert await store.events("acme", early.id, after="1", timeout=0.05) == []
    await asyncio.sleep(1.0)
    assert await store.events("acme", late.id, after="1", timeout=0.05) == []

    await subscribers_gone(redis_url, early_channel)
    # About two seconds after the early reader left, one after the late one did.
    assert await numsub(redis_url, late_channel) == 1
    await subscribers_gone(redis_url, late_channel)


async def subscribers_gone(url: str, channel: str) -> None:
    async with asyncio.timeout(HANG):
        while True:
            if await numsub(url, channel) == 0:
                return
            await asyncio.sleep(0.05)


async def test_a_reader_returning_within_the_linger_reuses_the_subscription(
    stores: Callable[..., RedisTaskStore],
) -> None:
    serving, applying = stores(subscription_linger=30.0), stores()
    record = new_record()
    await serving.create(record)
    assert await serving.events("acme", record.id, after="1", timeout=0.05) == []

    waiting = asyncio.create_task(serving.events("acme", record.id, after="1", timeout=HANG))
    await asyncio.sleep(0.1)
    await applying.apply(started(record))

    async with asyncio.timeout(HANG):
        assert summary(await waiting) == [("status", ("running", 1))]


class LiveReader:
    """Follows a task's log as a streaming client does, from after its queued status: calls
    ``events()`` again right after each batch, until it has seen ``until`` entries."""

    def __init__(self, store: RedisTaskStore, task_id: str, *, until: int) -> None:
        self.seen: list[StoredEvent] = []
        self.after = "1"
        self._progressed = asyncio.Event()
        self.task = asyncio.create_task(self._follow(store, task_id, until))

    async def _follow(self, store: RedisTaskStore, task_id: str, until: int) -> None:
        while len(self.seen) < until:
            for stored in await store.events("acme", task_id, after=self.after, timeout=HANG):
                self.seen.append(stored)
                self.after = stored.id
            self._progressed.set()

    async def reach(self, count: int) -> None:
        """Wait until the reader has seen ``count`` entries."""
        async with asyncio.timeout(HANG):
            while len(self.seen) < count:
                self._progressed.clear()
                await self._progressed.wait()


async def test_a_live_reader_reads_the_log_once_per_wake_up_and_misses_nothing(
    stores: Callable[..., RedisTaskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    serving, applying = stores(), stores()
    record = new_record()
    await serving.create(record)
    reads = empty = 0
    read = serving._read
    waiting = asyncio.Event()  # the reader's two first reads (before and after subscribing)

    async def counted(*args: object) -> object:
        nonlocal reads, empty
        reads += 1
        found = await read(*args)  # type: ignore[arg-type]
        if not found[0]:
            empty += 1
            if empty == 2:
                waiting.set()
        return found

    monkeypatch.setattr(serving, "_read", counted)
    reader = LiveReader(serving, record.id, until=5)
    async with asyncio.timeout(HANG):
        await waiting.wait()  # subscribed, found nothing, waiting
    first = reads
    events = [started(record), *(delta(record, seq, f"w{seq}") for seq in range(1, 5))]
    for index, stored in enumerate(events):
        await applying.apply(stored)
        await reader.reach(index + 1)
    async with asyncio.timeout(HANG):
        await reader.task
    # One read per event (each woke the reader once), none for the calls in between: the
    # reader was subscribed all along and nothing else was published.
    assert reads - first == len(events)
    # While the reader is away, an event lands: its next call must read, not wait.
    await applying.apply(delta(record, 5, "w5"))
    async with asyncio.timeout(HANG):
        late = await serving.events("acme", record.id, after=reader.after, timeout=HANG)
    assert [e.data.get("text") for e in late] == ["w5"]


def count_reads(store: RedisTaskStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The store's event-log reads so far, as a one-item list that counts up."""
    reads = [0]
    read = store._read

    async def counted(*args: object) -> object:
        reads[0] += 1
        return await read(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_read", counted)
    return reads


async def test_a_reader_waiting_for_the_end_sleeps_through_the_deltas(
    stores: Callable[..., RedisTaskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    serving, applying = stores(), stores()
    record = new_record()
    await serving.create(record)
    reads = count_reads(serving, monkeypatch)
    waiting = asyncio.create_task(
        serving.events("acme", record.id, after="1", timeout=HANG, end_only=True)
    )
    await asyncio.sleep(0.1)
    subscribed = reads[0]

    await applying.apply(started(record))
    for seq in range(1, 6):
        await applying.apply(delta(record, seq, f"w{seq} "))
    await asyncio.sleep(0.2)  # long enough for five wake-ups and reads, had there been any
    assert not waiting.done()
    assert reads[0] == subscribed

    await applying.apply(succeeded(record, 6, "w1 w2 w3 w4 w5 "))
    async with asyncio.timeout(HANG):
        found = await waiting
    assert [e.event for e in found] == ["status", *["delta"] * 5, "result"]
    assert reads[0] == subscribed + 1


@pytest.mark.parametrize("ending", ["failed", "cancelled while queued", "discarded"])
async def test_every_end_wakes_a_reader_waiting_for_the_end(
    stores: Callable[..., RedisTaskStore], ending: str
) -> None:
    serving, changing = stores(), stores()
    record = new_record()
    await serving.create(record)
    after = "1"
    if ending == "failed":
        await changing.apply(started(record))
        after = "2"
    waiting = asyncio.create_task(
        serving.events("acme", record.id, after=after, timeout=HANG, end_only=True)
    )
    await asyncio.sleep(0.1)
    assert not waiting.done()

    if ending == "failed":
        await changing.apply(failed(record, 1))
    elif ending == "discarded":
        await changing.discard("acme", record.id)
    else:
        await changing.cancel("acme", record.id)
    async with asyncio.timeout(5.0):  # well before HANG: woken, not timed out
        found = await waiting
    expected = {"failed": ["error"], "cancelled while queued": ["cancelled"]}
    assert [e.event for e in found] == expected.get(ending, [])


async def test_wake_ups_say_what_ends_the_task_and_which_entry_was_appended(
    stores: Callable[..., RedisTaskStore], redis_url: str
) -> None:
    store = stores()
    record, other = new_record(), new_record()
    await store.create(record)
    await store.create(other)
    async with aioredis.Redis.from_url(redis_url) as client:
        pubsub = client.pubsub()
        await pubsub.subscribe(f"orchestrator:task:{record.id}:wake")
        await pubsub.subscribe(f"orchestrator:task:{other.id}:wake")
        await store.apply(started(record))
        await store.apply(delta(record, 1, "a"))
        await store.apply(succeeded(record, 2, "a"))
        await store.cancel("acme", other.id)
        payloads: list[bytes] = []
        async with asyncio.timeout(HANG):
            while len(payloads) < 4:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    payloads.append(message["data"])
        await pubsub.aclose()
    # ids: 1 is the queued status, then the entries appended (a cancel's carries none)
    assert payloads == [b"2", b"3", b"t4", b"t"]


async def test_a_reader_on_the_replica_that_applies_takes_each_entry_without_a_read(
    stores: Callable[..., RedisTaskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    serving, other = stores(), stores()
    record = new_record()
    await serving.create(record)
    reads = count_reads(serving, monkeypatch)
    reader = LiveReader(serving, record.id, until=6)
    await asyncio.sleep(0.1)  # subscribed, found nothing, waiting
    subscribed = reads[0]
    for seq, applied in enumerate([started(record), *(delta(record, n, "w") for n in (1, 2))]):
        await serving.apply(applied)
        await reader.reach(seq + 1)
    await asyncio.sleep(0.1)  # the applies' own wake-up messages come in meanwhile
    assert reads[0] == subscribed  # handed over, and their messages were news to nobody

    await other.apply(delta(record, 3, "x"))  # another replica: only its message tells
    await reader.reach(4)
    assert reads[0] == subscribed + 1
    await serving.apply(delta(record, 4, "y"))
    await serving.apply(succeeded(record, 5, "wwxy"))
    async with asyncio.timeout(HANG):
        await reader.task
    assert [(e.id, e.event) for e in reader.seen] == [
        ("2", "status"),
        ("3", "delta"),
        ("4", "delta"),
        ("5", "delta"),
        ("6", "delta"),
        ("7", "result"),
    ]
    assert reads[0] <= subscribed + 2  # (one more if the result's delivery found it reading)


async def subscribed(store: RedisTaskStore, task_id: str) -> None:
    """Subscribe ``store`` to the task's wake-ups ahead of its create, as ``create(...,
    follow=True)`` does alongside its write, and wait for Redis to confirm it."""
    channel = store._channel(task_id)
    store._wakeups.prepare(channel)
    await confirmed(store, channel)


async def confirmed(store: RedisTaskStore, channel: str) -> None:
    """Wait until Redis has confirmed ``store``'s subscription to ``channel``."""
    async with asyncio.timeout(HANG):
        while True:
            if store._wakeups.generation(channel) is not None:
                return
            await asyncio.sleep(0.01)


async def test_a_task_created_to_be_followed_is_waited_on_without_a_read(
    stores: Callable[..., RedisTaskStore], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    store = stores()
    for cache_key in (None, "k"):  # the plain write and the SUBMIT script
        record = new_record()
        await subscribed(store, record.id)
        assert await store.create(record, cache_key=cache_key, follow=True) is record
        reads = count_reads(store, monkeypatch)
        waiting = asyncio.create_task(
            store.events("acme", record.id, after="1", timeout=HANG, end_only=True)
        )
        await asyncio.sleep(0.1)
        await store.apply(started(record))
        await store.apply(succeeded(record, 1, "hi"))
        async with asyncio.timeout(HANG):
            assert summary(await waiting) == [("result", ("hi", 1))]
        assert reads[0] == 0  # nothing read before the wait, nor after it: handed over
        monkeypatch.undo()


async def test_create_to_be_followed_subscribes_the_task_alongside(
    stores: Callable[..., RedisTaskStore], redis_url: str
) -> None:
    store = stores(subscription_linger=0.3)
    record = new_record()
    await store.create(record, follow=True)
    channel = store._channel(record.id)
    await confirmed(store, channel)
    assert await numsub(redis_url, channel) == 1
    await subscribers_gone(redis_url, channel)  # no reader came: it lingered, then went

    plain = new_record()
    await store.create(plain)
    await asyncio.sleep(0.1)
    assert await numsub(redis_url, store._channel(plain.id)) == 0


async def test_what_another_replica_appends_before_the_first_wait_is_not_missed(
    stores: Callable[..., RedisTaskStore],
) -> None:
    serving, other = stores(), stores()
    ran, cancelled = new_record(), new_record()
    for record in (ran, cancelled):
        await subscribed(serving, record.id)
        await serving.create(record, follow=True)
    await other.apply(started(ran))
    await other.cancel("acme", cancelled.id)
    await asyncio.sleep(0.1)  # their wake-ups came in before anyone waits

    async with asyncio.timeout(HANG):  # each found at once, not after the whole timeout
        assert summary(await serving.events("acme", ran.id, after="1", timeout=HANG)) == [
            ("status", ("running", 1))
        ]
        events = await serving.events("acme", cancelled.id, after="1", timeout=HANG)
    assert [e.event for e in events] == ["cancelled"]


async def test_a_followed_task_that_joins_another_follows_that_ones_log(
    stores: Callable[..., RedisTaskStore],
) -> None:
    store = stores()
    leader, follower = new_record(), new_record()
    await store.create(leader, cache_key="same")
    await store.confirm("acme", leader.id)
    await subscribed(store, follower.id)
    joined = await store.create(follower, cache_key="same", follow=True)
    assert joined.joined == leader.id
    waiting = asyncio.create_task(store.events("acme", follower.id, after="1", timeout=HANG))
    await asyncio.sleep(0.1)
    await store.apply(started(leader))
    async with asyncio.timeout(HANG):
        assert summary(await waiting) == [("status", ("running", 1))]


async def test_a_reader_waiting_for_the_end_is_handed_the_terminal_entry_alone(
    stores: Callable[..., RedisTaskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores()
    record = new_record()
    await store.create(record)
    reads = count_reads(store, monkeypatch)
    waiting = asyncio.create_task(
        store.events("acme", record.id, after="1", timeout=HANG, end_only=True)
    )
    await asyncio.sleep(0.1)
    subscribed = reads[0]
    await store.apply(started(record))
    await store.apply(delta(record, 1, "a"))
    await store.apply(succeeded(record, 2, "a"))
    async with asyncio.timeout(HANG):
        found = await waiting
    assert [(e.id, e.event, e.data["text"]) for e in found] == [("4", "result", "a")]
    assert reads[0] == subscribed
    # A reader that is not waiting for the end only gets every entry, in order.
    assert [e.event for e in await store.events("acme", record.id, after="1", timeout=HANG)] == [
        "status",
        "delta",
        "result",
    ]


async def test_entries_kept_for_local_readers_go_once_past_their_use(
    stores: Callable[..., RedisTaskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "_HANDOFF_SECONDS", 0.05)
    store = stores()
    first, second = new_record(), new_record()
    await store.create(first)
    await store.create(second)
    await store.apply(succeeded(first, 0, "a whole answer"))
    assert first.id in store._handed
    await asyncio.sleep(0.1)
    await store.apply(started(second))
    assert list(store._handed) == [second.id]  # (a result entry holds the whole answer)


async def test_an_entry_announced_before_its_delivery_here_is_not_hidden(
    stores: Callable[..., RedisTaskStore], redis_url: str
) -> None:
    store = stores()
    wakeups = store._wakeups
    channel = "orchestrator:task:t1:wake"
    async with aioredis.Redis.from_url(redis_url) as client, wakeups.watch(channel) as woken:

        async def message(payload: str) -> int | None:
            woken.clear()
            before = wakeups.generation(channel)
            await client.publish(channel, payload)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await woken.wait()
            after = wakeups.generation(channel)
            return None if after == before else after

        assert await message("3") is not None  # another replica appended entry 3
        assert wakeups.newest(channel) == 3
        generation = wakeups.generation(channel)
        woken.clear()
        wakeups.deliver(channel, 2, ended=False)  # ours, older: not news, changes nothing
        assert wakeups.generation(channel) == generation
        assert not woken.is_set()
        assert wakeups.newest(channel) == 3  # what a reader handed entry 2 must read up to
        wakeups.deliver(channel, 4, ended=False)
        assert woken.is_set()
        assert wakeups.generation(channel) != generation
        assert wakeups.newest(channel) == 4
        assert await message("4") is None  # its own message: no wake-up, same generation
        assert not woken.is_set()
        assert await message("5") is not None  # a newer entry wakes
        assert await message("t") is not None  # so does a change without a number (a cancel)
        assert wakeups.newest(channel) is None  # ... after which no entry is known newest


async def test_duplicate_idempotency_keys_in_one_pipeline_create_one_task(
    stores: Callable[..., RedisTaskStore],
) -> None:
    store = stores()
    records = [new_record() for _ in range(50)]

    created = await asyncio.gather(
        *(store.create(r, "same-key") for r in records), return_exceptions=True
    )

    (winner,) = [c for c in created if isinstance(c, TaskRecord)]
    # The others found the winner still pending (not yet confirmed published).
    assert all(isinstance(c, IdempotencyKeyInUse) for c in created if c is not winner)
    assert [r.id for r in records if await store.get("acme", r.id) is not None] == [winner.id]


async def test_concurrent_creates_all_land(stores: Callable[..., RedisTaskStore]) -> None:
    store = stores()
    records = [new_record() for _ in range(500)]

    await asyncio.gather(*(store.create(r) for r in records))

    fetched = await asyncio.gather(*(store.get("acme", r.id) for r in records))
    assert fetched == records


async def test_scripts_are_reloaded_after_a_script_flush(
    stores: Callable[..., RedisTaskStore], redis_url: str
) -> None:
    store = stores()
    record = new_record()
    await store.create(record, "k")
    async with aioredis.Redis.from_url(redis_url) as client:
        await client.script_flush()

    assert await store.apply(started(record)) is True
    assert (await store.create(new_record(), "k")).id == record.id


async def test_the_password_never_shows_in_repr(
    redis_server_factory: Callable[..., RedisServer], stores: Callable[..., RedisTaskStore]
) -> None:
    server = redis_server_factory(password="s3cret-pw")
    store = stores(server.url)

    await store.ping()
    assert "s3cret-pw" not in repr(store)
    assert "***" in repr(store)


async def test_a_down_redis_raises_store_unavailable(
    redis_server_factory: Callable[..., RedisServer], stores: Callable[..., RedisTaskStore]
) -> None:
    server = redis_server_factory()
    store = stores(server.url)
    await store.ping()
    server.kill()

    async with asyncio.timeout(HANG):
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.create(new_record())
        with pytest.raises(StoreUnavailable):
            await store.get("acme", "x")
        with pytest.raises(StoreUnavailable):
            await store.apply(started(new_record()))
        with pytest.raises(StoreUnavailable):
            await store.events("acme", "x")


async def test_the_store_works_again_once_redis_is_back(
    redis_server_factory: Callable[..., RedisServer], stores: Callable[..., RedisTaskStore]
) -> None:
    server = redis_server_factory(appendonly=True)
    store = stores(server.url)
    record = new_record()
    await store.create(record)

    server.restart()

    async with asyncio.timeout(HANG):
        assert await store.get("acme", record.id) == record
        await store.apply(succeeded(record, 0))
    done = await store.get("acme", record.id)
    assert done is not None
    assert done.status is TaskStatus.SUCCEEDED


async def test_a_reader_waiting_through_a_redis_restart_still_wakes(
    redis_server_factory: Callable[..., RedisServer], stores: Callable[..., RedisTaskStore]
) -> None:
    server = redis_server_factory(appendonly=True)
    serving, applying = stores(server.url), stores(server.url)
    record = new_record()
    await serving.create(record)
    await serving.apply(started(record))
    waiting = asyncio.create_task(serving.events("acme", record.id, after="2", timeout=HANG))
    await asyncio.sleep(0.2)

    server.restart()
    async with asyncio.timeout(HANG):
        while True:  # the first tries may meet the server still loading
            try:
                await applying.apply(delta(record, 1, "after the restart"))
                break
            except StoreUnavailable:
                await asyncio.sleep(0.05)

        assert summary(await waiting) == [("delta", ("after the restart", 1))]


async def test_a_replayed_key_of_a_follower_whose_leader_is_gone_returns_the_follower(
    stores: Callable[..., RedisTaskStore], redis_url: str
) -> None:
    """Never the new record, which was not stored: its request would publish a task no
    record knows and answer an id that reads as unknown."""
    store = stores()
    leader, follower = new_record(), new_record()
    await store.create(leader, cache_key="same")
    await store.confirm("acme", leader.id)
    joined = await store.create(follower, "key", cache_key="same")
    assert joined.joined == leader.id
    async with aioredis.Redis.from_url(redis_url) as client:
        await client.delete(f"orchestrator:task:{leader.id}")

    replayed = await store.create(new_record(), "key", cache_key="same")
    assert replayed.id == follower.id
