"""Flags on Redis: a key per flag with its TTL, and a pub/sub channel per group.

For a group ``G`` a flag ``N`` is the key ``flags:{G}:N`` (value ``1``, expiring with its
TTL on the server's clock); raising it publishes ``N`` on the channel ``flags:{G}``, in the
same script, after the key is written. The ``{G}`` hash tag keeps a group's keys in one
cluster slot. ``raised_flags`` is one ``MGET``. A watcher holds one pub/sub connection for
its group and resubscribes after a lost connection, with backoff (yielding ``SUBSCRIBED``
each time it is subscribed again, so that its caller can check what it may have missed).

Cost: raising is O(1) plus the watchers the message goes to; checking N flags is O(N) in one
round trip; memory is one small key per raised flag until its TTL runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis

from ._flags import SUBSCRIBED

__all__ = ["RAISE_FLAG", "flag_channel", "flag_key", "watch_channel"]

log = logging.getLogger("orchestrator_broker.flags")

# KEYS: the flag's key  ARGV: ttl_ms, channel, name
RAISE_FLAG = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

#: Waits between reconnection attempts of a watcher (then the last one, with jitter).
_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0)
#: How long one wait for a message lasts, so that a closed broker is noticed this soon.
_POLL = 1.0


def flag_key(group: str, name: str) -> str:
    return f"flags:{{{group}}}:{name}"


def flag_channel(group: str) -> str:
    return f"flags:{{{group}}}"


async def watch_channel(
    client: Redis, channel: str, closed: Callable[[], bool]
) -> AsyncGenerator[str, None]:
    """The messages of ``channel`` as text, ``SUBSCRIBED`` after each (re)subscription,
    until ``closed()``; connection errors are logged once per outage and retried."""
    failures = 0
    while not closed():
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            while not closed():
                message: Any = await pubsub.get_message(timeout=_POLL)
                if message is None:
                    continue
                kind = message.get("type")
                # (redis-py resubscribes by itself after some reconnections: each
                # confirmation, the first or a later one, is a new subscription)
                if kind == "subscribe":
                    if failures:
                        log.info("flags: watching %s again", channel)
                    failures = 0
                    yield SUBSCRIBED
                elif kind == "message":
                    data = message.get("data")
                    yield data.decode() if isinstance(data, bytes) else str(data)
        except (rexc.RedisError, OSError) as exc:
            if not failures:
                log.warning("flags: lost the subscription to %s (%s); reconnecting", channel, exc)
            failures += 1
        finally:
            with contextlib.suppress(rexc.RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        if closed():
            return
        wait = _BACKOFF[min(failures, len(_BACKOFF)) - 1] if failures else _BACKOFF[0]
        await asyncio.sleep(wait * random.uniform(0.5, 1.0))
