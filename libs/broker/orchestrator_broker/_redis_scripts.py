"""The Lua scripts behind every multi-step Redis operation, so each one is atomic.

Redis 7.0 has no XNACK and no "claim if still mine": these scripts provide them. Each
settle script first checks, with ``XPENDING``, that the entry is still pending for the
calling consumer; if not it returns ``LOST`` and changes nothing. Times come from the
server's ``TIME`` so clients with skewed clocks agree on when a delayed entry is due.
"""

from __future__ import annotations

from typing import Any

import attrs
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

DELETED_REASON = "entry deleted before it could be redelivered"

# Shared prologue. owned(): is ARGV id pending for this consumer? (pcall: a lost group
# is "not ours" rather than a script error). settle(): ack, and delete the entry only when
# this group is the stream's only reader - another group may still need it.
_PROLOGUE = """
local function owned(stream, group, id, consumer)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if p['err'] then return false end
  return #p > 0 and p[1][2] == consumer
end
local function settle(stream, group, id)
  redis.call('XACK', stream, group, id)
  if #redis.call('XINFO', 'GROUPS', stream) == 1 then redis.call('XDEL', stream, id) end
end
local function dead_record(dead, fields, reason, id, group, count, consumer)
  local args = {'XADD', dead, '*'}
  for _, v in ipairs(fields) do args[#args + 1] = v end
  for _, v in ipairs({'dead_reason', reason, 'dead_entry_id', id, 'dead_group', group,
                      'dead_delivery_count', count, 'dead_consumer', consumer}) do
    args[#args + 1] = v
  end
  return redis.call(unpack(args))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: stream, dead[, running, capped]  ARGV: group, id, consumer, reason, delivery_count[,
# key]. With a keyed entry's running set and the capped set (``_redis_fair``), its share of
# the key's cap is given back in the same step. -> 'LOST' | dead entry id
_DEAD_LETTER = (
    _PROLOGUE
    + """
local stream, dead = KEYS[1], KEYS[2]
local group, id, consumer = ARGV[1], ARGV[2], ARGV[3]
if not owned(stream, group, id, consumer) then return 'LOST' end
local entry = redis.call('XRANGE', stream, id, id)
local fields = {}
if #entry > 0 then fields = entry[1][2] end
local dead_id = dead_record(dead, fields, ARGV[4], id, group, ARGV[5], consumer)
settle(stream, group, id)
if KEYS[4] then
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[4], 'XX', 0, ARGV[6])
end
return dead_id
"""
)

# KEYS: stream, delayed, dead  ARGV: group, id, consumer, delay_ms, prior_deliveries
# The entry leaves the PEL; with delay 0 it is re-added at once (a blocked reader wakes
# up), otherwise parked in the delay ZSET as msgpack {prior, fields, original id}.
# -> 'LOST' | 'DELETED' (dead-lettered: nothing left to redeliver) | 'OK'
_NACK = (
    _PROLOGUE
    + """
local stream, delayed, dead = KEYS[1], KEYS[2], KEYS[3]
local group, id, consumer = ARGV[1], ARGV[2], ARGV[3]
local delay, prior = tonumber(ARGV[4]), ARGV[5]
if not owned(stream, group, id, consumer) then return 'LOST' end
local entry = redis.call('XRANGE', stream, id, id)
if #entry == 0 then
  dead_record(dead, {}, '"""
    + DELETED_REASON
    + """', id, group, prior, consumer)
  redis.call('XACK', stream, group, id)
  return 'DELETED'
end
local fields = {}
local raw = entry[1][2]
for i = 1, #raw, 2 do
  if raw[i] ~= 'prior_deliveries' then
    fields[#fields + 1] = raw[i]
    fields[#fields + 1] = raw[i + 1]
  end
end
if delay <= 0 then
  local args = {'XADD', stream, '*', 'prior_deliveries', prior}
  for _, v in ipairs(fields) do args[#args + 1] = v end
  redis.call(unpack(args))
else
  redis.call('ZADD', delayed, now_ms() + delay, cmsgpack.pack({prior, fields, id}))
end
settle(stream, group, id)
return 'OK'
"""
)

# KEYS: stream, delayed  ARGV: limit
# Moves due entries back onto the stream (new id, prior_deliveries set).
# -> {moved, ms until the next one is due or -1}
_PROMOTE = (
    _PROLOGUE
    + """
local stream, delayed = KEYS[1], KEYS[2]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local item = cmsgpack.unpack(member)
  local args = {'XADD', stream, '*', 'prior_deliveries', item[1]}
  for _, v in ipairs(item[2]) do args[#args + 1] = v end
  redis.call(unpack(args))
  redis.call('ZREM', delayed, member)
end
local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local wait = -1
if #nxt > 0 then wait = math.max(0, tonumber(nxt[2]) - now) end
return {#due, wait}
"""
)

# KEYS: stream  ARGV: group, consumer, id...
# Renews (XCLAIM JUSTID: idle reset, counter unchanged) the ids still pending for this
# consumer. -> the ids that were not (lost to another consumer, or deleted).
_EXTEND = (
    _PROLOGUE
    + """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local lost, mine = {}, {}
for i = 3, #ARGV do
  if owned(stream, group, ARGV[i], consumer) then mine[#mine + 1] = ARGV[i]
  else lost[#lost + 1] = ARGV[i] end
end
if #mine > 0 then
  local args = {'XCLAIM', stream, group, consumer, 0}
  for _, id in ipairs(mine) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  local claimed = {}
  for _, id in ipairs(redis.call(unpack(args))) do claimed[id] = true end
  for _, id in ipairs(mine) do
    if not claimed[id] then lost[#lost + 1] = id end
  end
end
return lost
"""
)

# KEYS: stream  ARGV: retain_ms
# XTRIM MINID to the oldest id any group still needs: the first pending entry, or the one
# after the last delivered. Never trims a stream without groups. -> entries trimmed
_TRIM = (
    _PROLOGUE
    + """
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', stream)
if #groups == 0 then return 0 end
local best_ms, best_seq = nil, nil
local function consider(ms, seq)
  if best_ms == nil or ms < best_ms or (ms == best_ms and seq < best_seq) then
    best_ms, best_seq = ms, seq
  end
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local ms, seq = parse(info['last-delivered-id'])
  consider(ms, seq + 1)
  if info['pending'] > 0 then
    local summary = redis.call('XPENDING', stream, info['name'])
    consider(parse(summary[2]))
  end
end
local retain = tonumber(ARGV[1])
if retain > 0 then consider(now_ms() - retain, 0) end
return redis.call('XTRIM', stream, 'MINID', string.format('%d-%d', best_ms, best_seq))
"""
)


# KEYS: dead  ARGV: older_than_ms (-1: all)
# Deletes the dead letters written before now - older_than (server clock, as their ids).
# -> how many were deleted
_PURGE_DEAD = (
    _PROLOGUE
    + """
local dead, older = KEYS[1], tonumber(ARGV[1])
if older < 0 then return redis.call('XTRIM', dead, 'MAXLEN', 0) end
return redis.call('XTRIM', dead, 'MINID', string.format('%d-0', now_ms() - older))
"""
)


@attrs.frozen
class Scripts:
    """The scripts registered on one client (EVALSHA, reloaded after a Redis restart)."""

    dead_letter: AsyncScript
    nack: AsyncScript
    promote: AsyncScript
    extend: AsyncScript
    trim: AsyncScript
    purge_dead: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> Scripts:
        def reg(source: str) -> Any:
            return client.register_script(source)

        return cls(
            dead_letter=reg(_DEAD_LETTER),
            nack=reg(_NACK),
            promote=reg(_PROMOTE),
            extend=reg(_EXTEND),
            trim=reg(_TRIM),
            purge_dead=reg(_PURGE_DEAD),
        )
