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
reads through (while its own ``st`` stays ``queued``); ``ck`` the cache key a leader leads,
and ``q`` = ``1`` on a leader that publishes no deltas (``TaskStore.create``).
A cache key ``<prefix>:cache:<tenant>:<digest>`` is a hash (``r`` the result blob, ``l`` the
log entry, both as a hit shows them), ``<cache key>:lead`` the leader's id, and
``<record>:fol`` the list of a leader's followers.

A follower costs the same whatever the number of followers before it: joining reads the
leader and appends one id to ``:fol``; nothing else about the leader changes. The list is
only there to expire the followers with their leader: the leader's end (``APPLY``) or
discard (``DISCARD``) touches it once, and ``FOLLOWERS`` then works through it in bounded
batches, so no single script runs longer with more followers.

Cancellation (``CANCEL``): a cancelled task's ``st`` is ``cancelled`` and ``p`` its partial
text. A leader cancelled while others follow it keeps its ``st`` (its run goes on for them)
and gets ``xv``, how it shows to its own tenant (orjson: finished_at, partial_text), and
``xc``, how many log entries are its own (the rest are its followers'); ``fx`` counts its
followers that were cancelled (they stay on ``:fol``, which is only ever scanned in
batches).

The per-tenant index ``<prefix>:tenant:<tenant>:tasks`` is a sorted set of task ids scored
by creation time (epoch seconds; a requeued task by when it was requeued). Every write to it
(``index()``) also drops the ids scored before ``cutoff`` (the score minus the longest a task
can live: the safety TTL plus the TTL) and sets the set's own TTL to that lifetime, so it
goes with the last of its tasks.
"""

from __future__ import annotations

import hashlib

import attrs

__all__ = [
    "APPLY",
    "CANCEL",
    "CREATE",
    "DISCARD",
    "FOLLOWERS",
    "PAGE",
    "REQUEUE",
    "SUBMIT",
    "Script",
]


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
local function index(key, score, id, cutoff, life)
  redis.call('ZADD', key, score, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. cutoff)
  redis.call('PEXPIRE', key, life)
end
"""

#: A create with an idempotency key and no cache key (one with neither is a plain HSET +
#: PEXPIRE). KEYS: record, idempotency key, tenant index. ARGV: tenant, fixed blob, safety ttl
#: ms, task id, record key prefix, pending ms, request fingerprint ('' for none), then the
#: index entry: score, cutoff, lifetime ms. Returns 1 when stored (or
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
index(KEYS[3], ARGV[8], ARGV[4], ARGV[9], ARGV[10])
return 1
"""
)

#: A create with a cache key: idempotency key first, then a cache hit, then joining the
#: published leader in flight, else leading (or, while the leader is still pending, running
#: alone). KEYS: record, idempotency key ('' for none), cache key, lead key, tenant index.
#: ARGV: tenant, fixed blob, safety ttl ms, task id, record key prefix, ttl ms, created at,
#: pending ms, request fingerprint ('' for none), then the index entry: score, cutoff,
#: lifetime ms, and '0' for a task without deltas ('1' else). Returns 1 when the task was
#: stored to be published, 2
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
  if leader then lead = redis.call('HMGET', ARGV[5] .. leader, 'st', 'pv', 'sa', 'n', 'q') end
  local live = lead[1] == 'queued' or lead[1] == 'running'
  -- A submission that streams does not follow a leader without deltas (q): it leads instead.
  local blind = live and lead[5] and ARGV[13] == '1'
  if live and not lead[2] and not blind then
    add('j', leader)
    -- The follower's id goes on the leader's list, for its expiry only (see FOLLOWERS); the
    -- list's own expiry is set once, by its first entry.
    local fol = ARGV[5] .. leader .. ':fol'
    if redis.call('RPUSH', fol, ARGV[4]) == 1 then redis.call('PEXPIRE', fol, ARGV[3]) end
    answer = {'j', leader, lead[1], lead[3], lead[4]}
  else
    add('pv', string.format('%d', clock() + tonumber(ARGV[8])))
    if not live or blind or tonumber(lead[2]) <= clock() then
      -- No leader, one abandoned by its request, or one without deltas (which runs on for
      -- its followers): lead. (Else the leader is not published yet: run alone rather than
      -- wait on its outcome.)
      redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3])
      add('ck', KEYS[3])
      if ARGV[13] == '0' then add('q', '1') end
    end
  end
end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
index(KEYS[5], ARGV[10], ARGV[4], ARGV[11], ARGV[12])
return answer
"""
)

#: KEYS: record, log, buffer, tenant index. ARGV: tenant, task id, wake channel, ttl ms.
#: Returns 0 if nothing was removed, else 1 + how many followers the task had: they are
#: still to fail (``FOLLOWERS``, ``orphan``), and their list now expires ttl ms from now.
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
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('PUBLISH', ARGV[3], 't')
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
      redis.call('PUBLISH', fk .. ':wake', 't')
    end
  end
end
return redis.call('LLEN', KEYS[2])
""")

#: ``TaskStore.requeue``. KEYS: record, log, buffer, tenant index. ARGV: tenant, task id,
#: fixed blob (to recreate an expired record), attempts, safety ttl ms, then the index entry
#: (score, cutoff, lifetime ms), wake channel, the done seq (``_steps.DONE_SEQ``). Returns
#: the attempt count kept, or -1 when the id is another tenant's task (nothing changed).
REQUEUE = Script(
    _PROLOGUE
    + """
local rec, log, buf = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', rec, 'tn', 'st', 'ca', 'n', 'ns', 'ik')
if cur[1] and cur[1] ~= ARGV[1] then return -1 end
local attempts = tonumber(ARGV[4])
if cur[1] then
  local ca = tonumber(cur[3] or '0')
  attempts = math.max(attempts, ca, tonumber(cur[4] or '0'))
  if cur[2] == 'queued' and ca == attempts and cur[5] == ARGV[10] then return attempts end
  redis.call('HDEL', rec, 'sa', 'fa', 'r', 'e', 'pv', 'p', 'xv', 'xc')
else
  redis.call('DEL', log)
  redis.call('HSET', rec, 'tn', ARGV[1], 'm', ARGV[3])
end
redis.call('DEL', buf)
redis.call('HSET', rec, 'st', 'queued', 'n', attempts, 'ca', attempts, 'ns', ARGV[10])
redis.call('RPUSH', log, string.format('["status",{"status":"queued","attempt":%d}]', attempts))
redis.call('PEXPIRE', rec, ARGV[5])
redis.call('PEXPIRE', log, ARGV[5])
if cur[6] and redis.call('GET', cur[6]) == ARGV[2] then redis.call('PEXPIRE', cur[6], ARGV[5]) end
index(KEYS[4], ARGV[6], ARGV[2], ARGV[7], ARGV[8])
redis.call('PUBLISH', ARGV[9], '')
return attempts
"""
)

#: One page of a tenant index, newest first. KEYS: index. ARGV: the cursor's task id ('' for
#: the start), its score ('' when unknown), how many. Returns {1, {id, score, ...}} for the
#: ids after the cursor, or {0, {}} when the cursor is not in the index and its score is not
#: known. A cursor that left the index between two pages of one listing (its task discarded
#: or pruned) resumes below its score.
PAGE = Script("""
local key, after, score, count = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
if after == '' then return {1, redis.call('ZREVRANGE', key, 0, count - 1, 'WITHSCORES')} end
local rank = redis.call('ZREVRANK', key, after)
if rank then
  return {1, redis.call('ZREVRANGE', key, rank + 1, rank + count, 'WITHSCORES')}
end
if score == '' then return {0, {}} end
return {1, redis.call('ZREVRANGEBYSCORE', key, '(' .. score, '-inf', 'WITHSCORES', 'LIMIT', 0,
  count)}
""")

#: ``TaskStore.cancel``. KEYS: record, log. ARGV: tenant, task id, ttl ms, finished at, the
#: record key prefix, the shown attempts and started at ('' for none) of a follower. Returns
#: 0 unknown (or another tenant's), 1 finished (nothing changed), 2 cancelled (now or
#: before; the run is to stop), 3 a follower cancelled alone (now or before), 4 a leader
#: cancelled alone while others follow its run (now or before), 5 running (its worker is to
#: stop it). The cancelled event's log entry is built here, with the partial text: the
#: deltas of the task's current attempt in its log (a follower's: a copy of its leader's).
CANCEL = Script("""
local rec, log = KEYS[1], KEYS[2]
local id, ttl, at, prefix = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cur = redis.call('HMGET', rec, 'tn', 'st', 'j', 'ck', 'ik', 'n', 'xv')
if cur[1] ~= ARGV[1] then return 0 end
if cur[7] then return 4 end
local st = cur[2]
if st == 'succeeded' or st == 'failed' then return 1 end
if st == 'cancelled' then return cur[3] and 3 or 2 end
local function partial(key, attempt)
  local parts = {}
  for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
    local e = cjson.decode(raw)
    if e[1] == 'delta' and tonumber(e[2]['attempt']) == attempt then
      parts[#parts + 1] = e[2]['text']
    end
  end
  if #parts == 0 then return false end
  return table.concat(parts)
end
local function ended(attempts, text, started)
  local entry = '["cancelled",{"partial_text":' .. cjson.encode(text or '') ..
    ',"attempt":' .. attempts .. '}]'
  redis.call('RPUSH', log, entry)
  local fields = {'st', 'cancelled', 'fa', at, 'n', attempts}
  if text then fields[#fields + 1] = 'p'; fields[#fields + 1] = text end
  if started then fields[#fields + 1] = 'sa'; fields[#fields + 1] = started end
  redis.call('HSET', rec, unpack(fields))
  redis.call('PEXPIRE', rec, ttl)
  redis.call('PEXPIRE', log, ttl)
  if cur[5] and redis.call('GET', cur[5]) == id then redis.call('PEXPIRE', cur[5], ttl) end
  redis.call('PUBLISH', rec .. ':wake', 't')
end
if cur[3] then
  -- A follower: it ends alone, on a copy of the log it was shown; the leader runs on.
  local lrec = prefix .. cur[3]
  local lead = redis.call('HMGET', lrec, 'st')
  if lead[1] == 'succeeded' or lead[1] == 'failed' then return 1 end
  local attempts = tonumber(ARGV[6])
  redis.call('DEL', log)
  local entries = redis.call('LRANGE', lrec .. ':log', 0, -1)
  for i = 1, #entries, 1000 do
    redis.call('RPUSH', log, unpack(entries, i, math.min(i + 999, #entries)))
  end
  local started = ARGV[7] ~= '' and ARGV[7] or nil
  ended(attempts, partial(log, attempts), started)
  -- Not taken off the leader's list (a scan): counted, so the leader knows who still follows.
  redis.call('HINCRBY', lrec, 'fx', 1)
  redis.call('PUBLISH', lrec .. ':wake', 't')  -- its readers wait on its leader's channel
  return 3
end
if cur[4] then
  -- Identical submissions run anew from now on.
  local lead = cur[4] .. ':lead'
  if redis.call('GET', lead) == id then redis.call('DEL', lead) end
end
local attempts = tonumber(cur[6] or '0')
local gone = tonumber(redis.call('HGET', rec, 'fx') or '0')
if redis.call('LLEN', rec .. ':fol') > gone then
  -- Others follow its run: it ends cancelled alone, the run goes on for them.
  local text = partial(log, attempts)
  local view = '{"finished_at":' .. at .. ',"attempt":' .. attempts .. ',"partial_text":' ..
    (text and cjson.encode(text) or 'null') .. '}'
  redis.call('HSET', rec, 'xv', view, 'xc', redis.call('LLEN', log))
  redis.call('PUBLISH', rec .. ':wake', 't')
  return 4
end
if st == 'queued' then
  ended(attempts, nil, nil)
  return 2
end
return 5
""")

#: KEYS: record, log, buffer. ARGV: tenant, task id, attempt, seq, ttl ms, safety ttl ms,
#: wake channel, then the step: terminal ('1'/'0'), status, at, log entry, result/error blob,
#: then for a success: the cache entry's result blob and log entry (filled in if the task
#: leads a cache key, whose lead it then releases; its followers expire with it).
#: Returns 0 ignored, 2 buffered (same rules as ``_steps.Cursor``), 4 ignored (the task had
#: ended) when the task's followers are still to be released (``FOLLOWERS``); when applied,
#: {1, id}, or {3, id} when the followers are still to be released (their list now expires
#: with the task), where id is the log id of the event's entry if it is the only entry
#: appended, to a log its readers read whole (no ``xv``), else 0. The record changes are
#: gathered into one HSET: every redis.call costs, and this runs per event. The wake-up it
#: publishes is the id of the newest entry, after ``t`` when the event ends the task
#: (``_wakeup``: waiters for the end only, and entries handed to local readers).
APPLY = Script("""
local rec, log, buf = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', rec, 'tn', 'st', 'ca', 'ns', 'ik', 'sa', 'ck', 'pv', 'xv')
if cur[1] ~= ARGV[1] then return 0 end
if cur[2] == 'succeeded' or cur[2] == 'failed' or cur[2] == 'cancelled' then
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
local committed, length = 0, 0
local function commit(s)
  length = redis.call('RPUSH', log, s[4])
  committed = committed + 1
  if length == 1 then redis.call('PEXPIRE', log, ARGV[6]) end
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
    if s[2] ~= 'cancelled' or s[5] ~= '' then  -- (a cancelled task's partial text: 'p')
      fields[#fields + 1] = (s[2] == 'succeeded') and 'r' or ((s[2] == 'failed') and 'e' or 'p')
      fields[#fields + 1] = s[5]
    end
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
-- log ids: 1 is the implied queued status, the entry at (1-based) position n is n + 1
redis.call('PUBLISH', ARGV[7], (step[1] == '1' and 't' or '') .. (length + 1))
if committed ~= 1 or cur[9] then return {outcome, 0} end
return {outcome, length + 1}
""")
