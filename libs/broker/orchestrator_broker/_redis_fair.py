"""The Redis adapter's waiting room for keyed entries: fair shares, priorities, aging, caps.

Layout, for a stream ``S`` (``{k}`` is the key, a Redis Cluster hash tag: each key's own
Redis keys share one hash slot):

- ``S:q:{k}:high|normal|low``: LISTs of waiting entries, msgpack ``{enqueued_ms, prior,
  fields}``; ``RPUSH`` to publish, ``LPUSH`` to put a nacked entry back at the front.
- ``S:fair:ready``: ZSET of the keys with dispatchable work, scored by their pass (virtual
  time). ``S:fair:pass`` (HASH) keeps the pass of keys not in it, ``S:fair:vt`` the pass of
  the last dispatch: a key becoming ready starts at ``max(its pass, vt)``.
- ``S:run:{k}``: ZSET of the key's dispatched, unsettled stream ids scored by lease expiry
  (ms); kept only for keys with a cap. Expired members do not count (and are dropped).
- ``S:fair:capped``: ZSET of the keys at their cap, scored by when to look again (their
  earliest lease expiry; 0 once one of their entries is settled).
- ``S:fair:delayed``: ZSET of nacked keyed entries until due (msgpack ``{key, priority,
  entry}``); due ones go back to the front of their queue.
- ``S:fair:n``: entries waiting or delayed (``backlog``); ``S:fair:depth``: HASH of the same
  by priority (``queue_depths``); ``S:fair:waiting``: ZSET of the keys with entries waiting
  or delayed, scored by how many (``waiting_keys``); ``S:fair:seq``: publish ids.
- ``S:fair:demand``: ZSET of ``<consumer>#<i>`` slots of consumers about to block on an
  empty stream, scored by expiry; a publish that finds one dispatches at once, so an idle
  system answers as fast as before. ``S:fair:conf``: the last consumer's weights and caps,
  for such a publish.

Costs per dispatched entry: the top key keeps dispatching while its pass stays below the
next key's, so the ready set (``ZRANGE 0 1``, then one ``ZADD``, or ``ZREM`` + ``HSET``:
O(log keys)) and up to three ``LLEN`` are per run of one key; per entry an ``LPOP`` or two
(``LINDEX`` of the heads only when the low head has aged) and one ``XADD``; with a cap a
``ZADD`` on ``S:run:{k}`` (O(log cap)). The counts and ``vt`` are written once per turn
(one ``ZINCRBY`` per key dispatched). About 4 commands per entry with one key and a
backlog, 12 with 10,000 keys of one entry each (``tests/broker/test_redis_fair.py``). Keys
capped or due from delay are looked at at most 100 per call. Settling a capped key's
entry (ack, nack, dead letter) releases its share in the same script as the settle.
"""

from __future__ import annotations

from typing import Any

import attrs
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ._redis_scripts import DELETED_REASON

_PROLOGUE = """
local PRIOS = {'high', 'normal', 'low'}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fkeys(s)
  return {ready = s .. ':fair:ready', pass = s .. ':fair:pass', vt = s .. ':fair:vt',
          capped = s .. ':fair:capped', delayed = s .. ':fair:delayed', n = s .. ':fair:n',
          seq = s .. ':fair:seq', demand = s .. ':fair:demand', conf = s .. ':fair:conf',
          depth = s .. ':fair:depth', waiting = s .. ':fair:waiting'}
end
-- d entries of key t at priority p more (or fewer) waiting or delayed.
local function count(k, t, p, d)
  redis.call('INCRBY', k.n, d)
  redis.call('HINCRBY', k.depth, p, d)
  if tonumber(redis.call('ZINCRBY', k.waiting, d, t)) <= 0 then redis.call('ZREM', k.waiting, t) end
end
local function qkey(s, t, p) return s .. ':q:{' .. t .. '}:' .. p end
local function rkey(s, t) return s .. ':run:{' .. t .. '}' end
local function parse_map(text)
  local m = {}
  for k, v in string.gmatch(text, '([^,=]+)=([^,]+)') do m[k] = tonumber(v) end
  return m
end
local function parse_conf(text)
  local lease, aging, w, c = string.match(text or '', '^(%d+);(%d+);([^;]*);([^;]*)$')
  if lease == nil then return {lease = 30000, aging = 60000, weights = {}, caps = {}} end
  return {lease = tonumber(lease), aging = tonumber(aging), weights = parse_map(w),
          caps = parse_map(c)}
end
local function weight(conf, t) return conf.weights[t] or conf.weights['*'] or 1 end
local function cap(conf, t) return conf.caps[t] or conf.caps['*'] end
local function make_ready(k, t)
  if redis.call('ZSCORE', k.ready, t) or redis.call('ZSCORE', k.capped, t) then return end
  local vt = tonumber(redis.call('GET', k.vt) or '0')
  local old = tonumber(redis.call('HGET', k.pass, t) or '0')
  redis.call('HDEL', k.pass, t)
  redis.call('ZADD', k.ready, math.max(vt, old), t)
end
local function has_work(s, t)
  for _, p in ipairs(PRIOS) do
    if redis.call('LLEN', qkey(s, t, p)) > 0 then return true end
  end
  return false
end
local function running(s, t, now)
  local r = rkey(s, t)
  redis.call('ZREMRANGEBYSCORE', r, '-inf', now)
  return redis.call('ZCARD', r)
end
local function head_enq(q)
  local h = redis.call('LINDEX', q, 0)
  if not h then return nil end
  return cmsgpack.unpack(h)[1]
end
local function take(s, t, now, aging)
  local item = redis.call('LPOP', qkey(s, t, 'high'))
  if item then return item, 'high' end
  local qn, ql = qkey(s, t, 'normal'), qkey(s, t, 'low')
  local el = head_enq(ql)
  -- An aged low head goes first unless the normal head is older still.
  if el and el <= now - aging then
    local en = head_enq(qn)
    if not en or el < en then return redis.call('LPOP', ql), 'low' end
  end
  item = redis.call('LPOP', qn)
  if item then return item, 'normal' end
  if el then return redis.call('LPOP', ql), 'low' end
  return nil, nil
end
local function park(k, s, t)
  local first = redis.call('ZRANGE', rkey(s, t), 0, 0, 'WITHSCORES')
  redis.call('ZADD', k.capped, first[2] or 0, t)
end
-- Moves up to n entries from the waiting room onto the stream; returns how many.
local function dispatch(s, k, conf, n, now)
  local due = redis.call('ZRANGEBYSCORE', k.delayed, '-inf', now, 'LIMIT', 0, 100)
  for _, m in ipairs(due) do
    local it = cmsgpack.unpack(m)
    redis.call('LPUSH', qkey(s, it[1], it[2]), it[3])
    redis.call('ZREM', k.delayed, m)
    make_ready(k, it[1])
  end
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', k.capped, '-inf', now, 'LIMIT', 0, 100)) do
    local c = cap(conf, t)
    if c == nil or running(s, t, now) < c then
      redis.call('ZREM', k.capped, t)
      if has_work(s, t) then make_ready(k, t) end
    else
      park(k, s, t)
    end
  end
  -- The top key keeps dispatching while its pass stays below the next key's (stride
  -- scheduling would pick it again anyway): one ready-set lookup and update per run of a
  -- key, not per entry. The counts and the virtual time are written once, at the end.
  local moved, vt = 0, nil
  local gone, by_prio, order = {}, {}, {}
  while moved < n do
    local top = redis.call('ZRANGE', k.ready, 0, 1, 'WITHSCORES')
    if #top == 0 then break end
    local t, pass, rival = top[1], tonumber(top[2]), math.huge
    if top[4] then rival = tonumber(top[4]) end
    local c = cap(conf, t)
    local r = 0
    if c ~= nil then r = running(s, t, now) end
    if c ~= nil and r >= c then
      redis.call('ZREM', k.ready, t)
      redis.call('HSET', k.pass, t, pass)
      park(k, s, t)
    else
      local step, more = 1 / weight(conf, t), true
      while moved < n do
        local item, p = take(s, t, now, conf.aging)
        if item == nil then
          more = false
          break
        end
        local it = cmsgpack.unpack(item)
        local args = {'XADD', s, '*'}
        if it[2] > 0 then
          args[4] = 'prior_deliveries'
          args[5] = it[2]
        end
        for _, v in ipairs(it[3]) do args[#args + 1] = v end
        for _, v in ipairs({'fair_key', t, 'fair_priority', p, 'fair_enqueued', it[1]}) do
          args[#args + 1] = v
        end
        local id = redis.call(unpack(args))
        if c ~= nil then
          redis.call('ZADD', rkey(s, t), now + conf.lease, id)
          r = r + 1
        end
        if gone[t] == nil then
          gone[t] = 0
          order[#order + 1] = t
        end
        gone[t] = gone[t] + 1
        by_prio[p] = (by_prio[p] or 0) + 1
        vt = pass
        pass = pass + step
        moved = moved + 1
        if pass >= rival or (c ~= nil and r >= c) then break end
      end
      if more and has_work(s, t) then
        redis.call('ZADD', k.ready, pass, t)
      else
        redis.call('ZREM', k.ready, t)
        redis.call('HSET', k.pass, t, pass)
      end
    end
  end
  if vt ~= nil then
    redis.call('SET', k.vt, vt)
    redis.call('INCRBY', k.n, -moved)
    for p, d in pairs(by_prio) do redis.call('HINCRBY', k.depth, p, -d) end
    for _, t in ipairs(order) do
      if tonumber(redis.call('ZINCRBY', k.waiting, -gone[t], t)) <= 0 then
        redis.call('ZREM', k.waiting, t)
      end
    end
  end
  return moved
end
"""

# KEYS: stream  ARGV: key, priority, fields...
# Into the key's waiting room; dispatched at once when a consumer waits. -> a waiting-room id
_PUBLISH = (
    _PROLOGUE
    + """
local s, t, p = KEYS[1], ARGV[1], ARGV[2]
local k = fkeys(s)
local now = now_ms()
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('RPUSH', qkey(s, t, p), cmsgpack.pack({now, 0, fields}))
count(k, t, p, 1)
make_ready(k, t)
redis.call('ZREMRANGEBYSCORE', k.demand, '-inf', now)
if #redis.call('ZPOPMIN', k.demand) > 0 then
  dispatch(s, k, parse_conf(redis.call('GET', k.conf)), 1, now)
end
return string.format('%d-%d', now, redis.call('INCR', k.seq))
"""
)

# KEYS: stream, delayed  ARGV: limit, n, consumer, block_ms, conf, expects_keyed (1|0)
# One consumer turn: promote due delayed (unkeyed) entries as _PROMOTE does, then dispatch
# up to n keyed ones; if fewer than n, register the rest as demand until block_ms from now.
# -> {ms until the next delayed entry is due or -1, dispatched}
_TURN = (
    _PROLOGUE
    + """
local s, delayed = KEYS[1], KEYS[2]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local item = cmsgpack.unpack(member)
  local args = {'XADD', s, '*', 'prior_deliveries', item[1]}
  for _, v in ipairs(item[2]) do args[#args + 1] = v end
  redis.call(unpack(args))
  redis.call('ZREM', delayed, member)
end
local wait = -1
local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if #nxt > 0 then wait = math.max(0, tonumber(nxt[2]) - now) end
local k = fkeys(s)
local moved = 0
local n = tonumber(ARGV[2])
if n > 0 and (ARGV[6] == '1' or redis.call('EXISTS', k.n) == 1) then
  local consumer = ARGV[3]
  local mine = {}
  for i = 1, n do mine[i] = consumer .. '#' .. i end
  redis.call('ZREM', k.demand, unpack(mine))
  local conf = parse_conf(ARGV[5])
  moved = dispatch(s, k, conf, n, now)
  if moved < n then
    local args = {'ZADD', k.demand}
    for i = 1, n - moved do
      args[#args + 1] = now + tonumber(ARGV[4])
      args[#args + 1] = mine[i]
    end
    redis.call(unpack(args))
    redis.call('SET', k.conf, ARGV[5])
  end
  local fd = redis.call('ZRANGE', k.delayed, 0, 0, 'WITHSCORES')
  if #fd > 0 then
    local w = math.max(0, tonumber(fd[2]) - now)
    if wait < 0 or w < wait then wait = w end
  end
end
return {wait, moved}
"""
)

# KEYS: stream, dead  ARGV: group, id, consumer, delay_ms, prior_deliveries
# A keyed entry's nack/defer: like _NACK, but back to its key's waiting room (at the front,
# after delay_ms), and out of its key's running set. -> 'LOST' | 'DELETED' | 'OK'
_NACK = (
    _PROLOGUE
    + """
local s, dead = KEYS[1], KEYS[2]
local group, id, consumer = ARGV[1], ARGV[2], ARGV[3]
local delay, prior = tonumber(ARGV[4]), tonumber(ARGV[5])
local pend = redis.pcall('XPENDING', s, group, id, id, 1)
if pend['err'] or #pend == 0 or pend[1][2] ~= consumer then return 'LOST' end
local entry = redis.call('XRANGE', s, id, id)
if #entry == 0 then
  redis.call('XADD', dead, '*', 'dead_reason', '"""
    + DELETED_REASON
    + """', 'dead_entry_id', id, 'dead_group', group, 'dead_delivery_count', prior,
             'dead_consumer', consumer)
  redis.call('XACK', s, group, id)
  return 'DELETED'
end
local fields, t, p, enq = {}, nil, 'normal', 0
local raw = entry[1][2]
for i = 1, #raw, 2 do
  local name = raw[i]
  if name == 'fair_key' then t = raw[i + 1]
  elseif name == 'fair_priority' then p = raw[i + 1]
  elseif name == 'fair_enqueued' then enq = tonumber(raw[i + 1]) or 0
  elseif name ~= 'prior_deliveries' then
    fields[#fields + 1] = name
    fields[#fields + 1] = raw[i + 1]
  end
end
local k = fkeys(s)
local item = cmsgpack.pack({enq, prior, fields})
local now = now_ms()
count(k, t, p, 1)
if delay <= 0 then
  redis.call('LPUSH', qkey(s, t, p), item)
  make_ready(k, t)
else
  redis.call('ZADD', k.delayed, now + delay, cmsgpack.pack({t, p, item}))
end
redis.call('ZREM', rkey(s, t), id)
redis.call('ZADD', k.capped, 'XX', 0, t)
redis.call('XACK', s, group, id)
if #redis.call('XINFO', 'GROUPS', s) == 1 then redis.call('XDEL', s, id) end
return 'OK'
"""
)

# KEYS: stream, running, capped  ARGV: group, id, key
# A capped key's ack: XACK and give the entry's share of the cap back in one step, so no
# crash or lost connection between the two can hold the share until the lease runs out.
# A capped key is looked at again by the next dispatch (XX: only if it is capped).
_ACK = """
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 'XX', 0, ARGV[3])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""

# KEYS: stream  ARGV: lease_ms, only_existing (1|0), key, id, key, id, ...
# Sets the lease expiry of running keyed entries (renewals: only those still counted).
_RENEW = (
    _PROLOGUE
    + """
local s = KEYS[1]
local expiry = now_ms() + tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  if ARGV[2] == '1' then redis.call('ZADD', rkey(s, ARGV[i]), 'XX', expiry, ARGV[i + 1])
  else redis.call('ZADD', rkey(s, ARGV[i]), expiry, ARGV[i + 1]) end
end
return 0
"""
)


def run_key(stream: str, key: str) -> str:
    """The ZSET of ``key``'s running entries of ``stream`` (by lease expiry)."""
    return f"{stream}:run:{{{key}}}"


def capped_key(stream: str) -> str:
    return f"{stream}:fair:capped"


def waiting_key(stream: str) -> str:
    """How many keyed entries of ``stream`` wait (or wait out a delay)."""
    return f"{stream}:fair:n"


def depth_key(stream: str) -> str:
    """The same by priority (a HASH: ``high``, ``normal``, ``low``)."""
    return f"{stream}:fair:depth"


def waiting_keys_key(stream: str) -> str:
    """The keys with entries waiting or delayed, scored by how many (a ZSET)."""
    return f"{stream}:fair:waiting"


@attrs.frozen
class FairScripts:
    """The waiting-room scripts registered on one client."""

    publish: AsyncScript
    turn: AsyncScript
    nack: AsyncScript
    renew: AsyncScript
    ack: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> FairScripts:
        def reg(source: str) -> Any:
            return client.register_script(source)

        return cls(reg(_PUBLISH), reg(_TURN), reg(_NACK), reg(_RENEW), reg(_ACK))
