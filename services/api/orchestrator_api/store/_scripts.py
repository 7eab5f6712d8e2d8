"""The Lua scripts of the Redis task store; each runs atomically on the server.

Record hash fields: ``tn`` tenant, ``m`` the fixed part (orjson: id, created_at, model,
metadata, trace_id), ``st`` status, ``sa``/``fa`` started/finished at, ``n`` attempts,
``r`` result / ``e`` error (orjson), ``ik`` the idempotency key's name, ``fp`` the
fingerprint of the request that used it, and the application
cursor ``ca`` (attempt followed) / ``ns`` (next seq). The log is a list of orjson
``[event, data]`` entries; the first, ``queued``, entry is implied, not stored. ``buf`` holds
events that overtook a predecessor (seq -> cmsgpack'd step), until the gap fills.

A task created to be published carries ``pv``, the Redis time (ms) until which its request
may still confirm it (``TaskStore.create``); ``confirm`` or any applied event deletes it.

Shared answers (``_sharing``): ``c`` = ``1`` on a cache hit; ``j`` the leader a follower
reads through (while its own ``st`` stays ``queued``); ``ck`` the cache key a leader leads.
A cache key ``<prefix>:cache:<tenant>:<digest>`` is a hash (``r`` the result blob, ``l`` the
log entry, both as a hit shows them), ``<cache key>:lead`` the leader's id, and
``<record>:fol`` the list of a leader's followers.

A follower costs the same whatever the number of followers before it: joining reads the
leader and appends one id to ``:fol``; nothing else about the leader changes. The list is
only there to expire the followers with their leader: the leader's end (``APPLY``) or
discard (``DISCARD``) touches it once, and ``FOLLOWERS`` then works through it in bounded
batches, so no single script runs longer with more followers.
"""

from __future__ import annotations

import hashlib

import attrs

__all__ = ["APPLY", "CREATE", "DISCARD", "FOLLOWERS", "SUBMIT", "Script"]


@attrs.frozen
class Script:
    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


# The creating scripts' prologue. ``clock()``: the server's time in ms, read once and only
# when needed (scripts may read TIME: Redis 7 replicates effects). ``replay``: the answer to
# a replay of an idempotency key whose existing record (``rec``, its HMGET) is at ``key``: 3
# if another request (fingerprint ``fp``, '' for none) made it, 2 while it is pending, else
# ``rec``; nil once it was abandoned (pending past its deadline), so the key may be taken over.
_PROLOGUE = """
local now
local function clock()
  if not now then
    local t = redis.call('TIME')
    now = t[1] * 1000 + math.floor(t[2] / 1000)
  end
  return now
end
local function replay(key, rec, fp)
  local held = redis.call('HMGET', key, 'pv', 'fp')
  if held[2] and fp ~= '' and held[2] ~= fp then return 3 end
  if not held[1] then return rec end
  if tonumber(held[1]) > clock() then return 2 end
  return nil
end
"""

#: A create with an idempotency key and no cache key (one with neither is a plain HSET +
#: PEXPIRE). KEYS: record, idempotency key. ARGV: tenant, fixed blob, safety ttl ms, task id,
#: record key prefix, pending ms, request fingerprint ('' for none). Returns 1 when stored (or
#: already stored by a retry of this call), 2 when the key's task is still pending, 3 when it
#: was created by another request (fingerprints differ; nothing stored either way), else the
#: existing record's fields (tn m st sa fa n r e j c) for the idempotency key. A key whose
#: task is pending past its deadline (abandoned) is taken over.
CREATE = Script(
    _PROLOGUE
    + """
local existing = redis.call('GET', KEYS[2])
if existing then
  local rec = redis.call('HMGET', ARGV[5] .. existing,
    'tn', 'm', 'st', 'sa', 'fa', 'n', 'r', 'e', 'j', 'c')
  if rec[1] then
    if existing == ARGV[4] then return 1 end
    local answer = replay(ARGV[5] .. existing, rec, ARGV[7])
    if answer then return answer end
  end
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 'tn', ARGV[1], 'm', ARGV[2], 'st', 'queued', 'ik', KEYS[2],
  'pv', string.format('%d', clock() + tonumber(ARGV[6])))
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'fp', ARGV[7]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

#: A create with a cache key: idempotency key first, then a cache hit, then joining the
#: published leader in flight, else leading (or, while the leader is still pending, running
#: alone). KEYS: record, idempotency key ('' for none), cache key, lead key. ARGV: tenant,
#: fixed blob, safety ttl ms, task id, record key prefix, ttl ms, created at, pending ms,
#: request fingerprint ('' for none). Returns 1 when the task was stored to be published, 2
#: when the idempotency key's task is still pending, 3 when it was created by another request
#: (nothing stored either way); ``{'h', result blob}`` for a hit stored, ``{'j', leader id,
#: its status, started at, attempts}`` for a follower stored (the caller has the rest of
#: either record: nothing of it is sent back), else ``{'r', fields (tn m st sa fa n r e j c)}``
#: of the idempotency key's record. A retry of this call answers as its first run did (a
#: shared task's as ``'r'``).
SUBMIT = Script(
    _PROLOGUE
    + """
local F = {'tn', 'm', 'st', 'sa', 'fa', 'n', 'r', 'e', 'j', 'c'}
local mine = redis.call('HMGET', KEYS[1], 'tn', 'j', 'c')
if mine[1] then
  if mine[2] or mine[3] then return {'r', unpack(redis.call('HMGET', KEYS[1], unpack(F)))} end
  return 1
end
if KEYS[2] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    local rec = redis.call('HMGET', ARGV[5] .. existing, unpack(F))
    if rec[1] then
      local answer = replay(ARGV[5] .. existing, rec, ARGV[9])
      if type(answer) == 'table' then return {'r', unpack(answer)} end
      if answer then return answer end
    end
  end
end
-- The record's fields, written by one HSET: every redis.call costs, and this runs per request.
local fields = {'tn', ARGV[1], 'm', ARGV[2], 'st', 'queued'}
local function add(name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
if KEYS[2] ~= '' then
  add('ik', KEYS[2])
  if ARGV[9] ~= '' then add('fp', ARGV[9]) end
end
local ttl = ARGV[3]
local answer = 1
local hit = redis.call('HMGET', KEYS[3], 'r', 'l')
if hit[1] and hit[2] then
  ttl = ARGV[6]
  fields[6] = 'succeeded'
  add('sa', ARGV[7])
  add('fa', ARGV[7])
  add('n', '0')
  add('r', hit[1])
  add('c', '1')
  local log = KEYS[1] .. ':log'
  redis.call('RPUSH', log, hit[2])
  redis.call('PEXPIRE', log, ttl)
  answer = {'h', hit[1]}
else
  local leader = redis.call('GET', KEYS[4])
  local lead = {}
  if leader then lead = redis.call('HMGET', ARGV[5] .. leader, 'st', 'pv', 'sa', 'n') end
  local live = lead[1] == 'queued' or lead[1] == 'running'
  if live and not lead[2] then
    add('j', leader)
    -- The follower's id goes on the leader's list, for its expiry only (see FOLLOWERS); the
    -- list's own expiry is set once, by its first entry.
    local fol = ARGV[5] .. leader .. ':fol'
    if redis.call('RPUSH', fol, ARGV[4]) == 1 then redis.call('PEXPIRE', fol, ARGV[3]) end
    answer = {'j', leader, lead[1], lead[3], lead[4]}
  else
    add('pv', string.format('%d', clock() + tonumber(ARGV[8])))
    if not (live and tonumber(lead[2]) > clock()) then
      -- No leader, or one abandoned by its request: lead. (Else the leader is not published
      -- yet: run alone rather than wait on its outcome.)
      redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3])
      add('ck', KEYS[3])
    end
  end
end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
return answer
"""
)

#: KEYS: record, log, buffer. ARGV: tenant, task id, wake channel, ttl ms. Returns 0 if nothing
#: was removed, else 1 + how many followers the task had: they are still to fail
#: (``FOLLOWERS``, ``orphan``), and their list now expires ttl ms from now.
DISCARD = Script("""
local cur = redis.call('HMGET', KEYS[1], 'tn', 'ik', 'ck')
if cur[1] ~= ARGV[1] then return 0 end
if cur[2] and redis.call('GET', cur[2]) == ARGV[2] then redis.call('DEL', cur[2]) end
local waiting = 0
if cur[3] then
  local lead = cur[3] .. ':lead'
  if redis.call('GET', lead) == ARGV[2] then redis.call('DEL', lead) end
  local fol = KEYS[1] .. ':fol'
  waiting = redis.call('LLEN', fol)
  if waiting > 0 then redis.call('PEXPIRE', fol, ARGV[4]) end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[3], '')
return 1 + waiting
""")

#: One bounded batch of a leader's followers, off its list. KEYS: the leader's record, its
#: followers list. ARGV: ``release`` or ``orphan``, batch size, record key prefix, ttl ms,
#: then for ``orphan``: finished at, error blob, log entry. ``release`` (the leader ended): a
#: follower, and its idempotency key, expire when the leader's record does (in ttl ms if that
#: has no expiry). ``orphan`` (the leader was discarded): a follower still queued fails
#: (``_sharing.ORPHANED``) and expires in ttl ms. Returns how many followers are left.
FOLLOWERS = Script("""
local ids = redis.call('LPOP', KEYS[2], ARGV[2])
if not ids then return 0 end
if ARGV[1] == 'release' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl == -1 then ttl = tonumber(ARGV[4]) elseif ttl < 1 then ttl = 1 end
  for _, f in ipairs(ids) do
    local fk = ARGV[3] .. f
    if redis.call('PEXPIRE', fk, ttl) == 1 then
      local fik = redis.call('HGET', fk, 'ik')
      if fik and redis.call('GET', fik) == f then redis.call('PEXPIRE', fik, ttl) end
    end
  end
else
  for _, f in ipairs(ids) do
    local fk = ARGV[3] .. f
    local fcur = redis.call('HMGET', fk, 'st', 'ik')
    if fcur[1] == 'queued' then
      redis.call('HSET', fk, 'st', 'failed', 'fa', ARGV[5], 'e', ARGV[6])
      redis.call('RPUSH', fk .. ':log', ARGV[7])
      redis.call('PEXPIRE', fk .. ':log', ARGV[4])
      redis.call('PEXPIRE', fk, ARGV[4])
      if fcur[2] and redis.call('GET', fcur[2]) == f then
        redis.call('PEXPIRE', fcur[2], ARGV[4])
      end
      redis.call('PUBLISH', fk .. ':wake', '')
    end
  end
end
return redis.call('LLEN', KEYS[2])
""")

#: KEYS: record, log, buffer. ARGV: tenant, task id, attempt, seq, ttl ms, safety ttl ms,
#: wake channel, then the step: terminal ('1'/'0'), status, at, log entry, result/error blob,
#: then for a success: the cache entry's result blob and log entry (filled in if the task
#: leads a cache key, whose lead it then releases; its followers expire with it).
#: Returns 0 ignored, 1 applied, 2 buffered (same rules as ``_steps.Cursor``); 3 applied, and
#: 4 ignored (the task had ended), when the task's followers are still to be released
#: (``FOLLOWERS``; their list now expires with the task). The record changes are gathered
#: into one HSET: every redis.call costs, and this runs per event.
APPLY = Script("""
local rec, log, buf = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', rec, 'tn', 'st', 'ca', 'ns', 'ik', 'sa', 'ck', 'pv')
if cur[1] ~= ARGV[1] then return 0 end
if cur[2] == 'succeeded' or cur[2] == 'failed' then
  -- A redelivery after a release of its followers was cut short: resume it.
  if cur[7] and redis.call('EXISTS', rec .. ':fol') == 1 then return 4 end
  return 0
end
local attempt, seq = tonumber(ARGV[3]), tonumber(ARGV[4])
local ca, ns = tonumber(cur[3] or '0'), tonumber(cur[4] or '0')
if attempt < ca then return 0 end
if attempt > ca then
  if ca > 0 then redis.call('DEL', buf) end
  ca, ns = attempt, 0
end
if seq < ns then return 0 end
if cur[8] then redis.call('HDEL', rec, 'pv') end -- a worker has it: it was published
local step = {ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[15]}
if step[1] ~= '1' and seq > ns then
  if redis.call('HSETNX', buf, seq, cmsgpack.pack(step)) == 0 then return 0 end
  redis.call('PEXPIRE', buf, ARGV[6])
  if ca ~= tonumber(cur[3] or '0') then redis.call('HSET', rec, 'ca', ca, 'ns', ns) end
  return 2
end
local fields = {}
local started = cur[6]
local function commit(s)
  if redis.call('RPUSH', log, s[4]) == 1 then redis.call('PEXPIRE', log, ARGV[6]) end
  if not started then
    -- the attempt's start as the worker said (s[6]; absent from steps buffered by an older
    -- API), else the event's time
    started = s[6] or s[3]
    fields[#fields + 1] = 'sa'
    fields[#fields + 1] = started
  end
  if s[1] == '1' then
    fields[#fields + 1] = 'fa'
    fields[#fields + 1] = s[3]
    fields[#fields + 1] = (s[2] == 'succeeded') and 'r' or 'e'
    fields[#fields + 1] = s[5]
  end
  return s[2]
end
local status = commit(step)
local outcome = 1
ns = seq + 1
if step[1] == '1' then
  redis.call('DEL', buf)
  redis.call('PEXPIRE', rec, ARGV[5])
  redis.call('PEXPIRE', log, ARGV[5])
  if cur[5] and redis.call('GET', cur[5]) == ARGV[2] then redis.call('PEXPIRE', cur[5], ARGV[5]) end
  if cur[7] then
    local lead = cur[7] .. ':lead'
    if redis.call('GET', lead) == ARGV[2] then redis.call('DEL', lead) end
    if step[2] == 'succeeded' then
      redis.call('HSET', cur[7], 'r', ARGV[13], 'l', ARGV[14])
      redis.call('PEXPIRE', cur[7], ARGV[5])
    end
    -- Its followers expire with it: FOLLOWERS releases them, a bounded batch at a time.
    if redis.call('PEXPIRE', rec .. ':fol', ARGV[5]) == 1 then outcome = 3 end
  end
else
  while true do
    local packed = redis.call('HGET', buf, ns)
    if not packed then break end
    redis.call('HDEL', buf, ns)
    status = commit(cmsgpack.unpack(packed))
    ns = ns + 1
  end
end
redis.call('HSET', rec, 'st', status, 'n', ca, 'ca', ca, 'ns', ns, unpack(fields))
redis.call('PUBLISH', ARGV[7], '')
return outcome
""")
