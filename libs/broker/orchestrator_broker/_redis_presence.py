"""Presence on Redis: a ZSET of member -> expiry and a HASH of member -> payload per group.

For a group ``G`` the keys are ``presence:{G}`` (ZSET, score: expiry in ms of the server's
clock) and ``presence:{G}:payloads`` (HASH of JSON payloads); the ``{G}`` hash tag puts both
in one cluster slot, so one script can touch both. Each script prunes expired members
(at most ``_PRUNE`` per call) from both keys in the same step it reads or writes, so a
member is never listed without its payload nor a dead one listed. ``announce`` also keeps
both keys alive for at least the longest TTL announced, so a group whose members all stopped
disappears from Redis by itself.

Cost: ``announce`` is O(log N) plus the pruned members; ``members`` is O(N) in the live
members (up to ``_MAX_MEMBERS``), N being tens of workers, not thousands.
"""

from __future__ import annotations

from typing import Any

import attrs
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

#: Expired members removed by one call, so a mass expiry costs one call a bounded amount.
_PRUNE = 1000
#: Live members one ``members`` call returns at most.
_MAX_MEMBERS = 1000  # also within Lua's unpack() limit


def presence_keys(group: str) -> list[str]:
    """The ZSET and the HASH of presence ``group`` (one hash slot)."""
    return [f"presence:{{{group}}}", f"presence:{{{group}}}:payloads"]


_PROLOGUE = f"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function prune(zset, hash, now)
  local gone = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, {_PRUNE})
  if #gone > 0 then
    redis.call('ZREM', zset, unpack(gone))
    redis.call('HDEL', hash, unpack(gone))
  end
end
"""

# KEYS: zset, hash  ARGV: member, ttl_ms, payload
_ANNOUNCE = (
    _PROLOGUE
    + """
local zset, hash = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[2])
local now = now_ms()
prune(zset, hash, now)
redis.call('ZADD', zset, now + ttl, ARGV[1])
redis.call('HSET', hash, ARGV[1], ARGV[3])
for _, key in ipairs({zset, hash}) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return 1
"""
)

# KEYS: zset, hash  ARGV: member
_WITHDRAW = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS: zset, hash  -> {member, payload, member, payload, ...} (payload false if missing)
_MEMBERS = (
    _PROLOGUE
    + f"""
local zset, hash = KEYS[1], KEYS[2]
local now = now_ms()
prune(zset, hash, now)
local live = redis.call('ZRANGEBYSCORE', zset, '(' .. now, '+inf', 'LIMIT', 0, {_MAX_MEMBERS})
if #live == 0 then return {{}} end
local payloads = redis.call('HMGET', hash, unpack(live))
local out = {{}}
for i, member in ipairs(live) do
  out[#out + 1] = member
  out[#out + 1] = payloads[i]
end
return out
"""
)


@attrs.frozen
class PresenceScripts:
    """The presence scripts registered on one client."""

    announce: AsyncScript
    withdraw: AsyncScript
    members: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> PresenceScripts:
        def reg(source: str) -> Any:
            return client.register_script(source)

        return cls(announce=reg(_ANNOUNCE), withdraw=reg(_WITHDRAW), members=reg(_MEMBERS))
