"""The Lua scripts of the Redis task store; each runs atomically on the server.

Record hash fields: ``tn`` tenant, ``m`` the fixed part (orjson: id, created_at, model,
metadata, trace_id), ``st`` status, ``sa``/``fa`` started/finished at, ``n`` attempts,
``r`` result / ``e`` error (orjson), ``ik`` the idempotency key's name, and the application
cursor ``ca`` (attempt followed) / ``ns`` (next seq). The log is a list of orjson
``[event, data]`` entries; the first, ``queued``, entry is implied, not stored. ``buf`` holds
events that overtook a predecessor (seq -> cmsgpack'd step), until the gap fills.
"""

from __future__ import annotations

import hashlib

import attrs

__all__ = ["APPLY", "CREATE", "DISCARD", "Script"]


@attrs.frozen
class Script:
    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


#: KEYS: record[, idempotency key]. ARGV: tenant, fixed blob, safety ttl ms, task id,
#: record key prefix. Returns 1 when stored (or already stored by a retry of this call),
#: else the existing record's fields (tn m st sa fa n r e) for the idempotency key.
CREATE = Script("""
if #KEYS > 1 then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    local rec = redis.call('HMGET', ARGV[5] .. existing, 'tn', 'm', 'st', 'sa', 'fa', 'n', 'r', 'e')
    if rec[1] then
      if existing == ARGV[4] then return 1 end
      return rec
    end
  end
  if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
  redis.call('HSET', KEYS[1], 'tn', ARGV[1], 'm', ARGV[2], 'st', 'queued', 'ik', KEYS[2])
else
  if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
  redis.call('HSET', KEYS[1], 'tn', ARGV[1], 'm', ARGV[2], 'st', 'queued')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
""")

#: KEYS: record, log, buffer. ARGV: tenant, task id, wake channel. Returns 1 if removed.
DISCARD = Script("""
local cur = redis.call('HMGET', KEYS[1], 'tn', 'ik')
if cur[1] ~= ARGV[1] then return 0 end
if cur[2] and redis.call('GET', cur[2]) == ARGV[2] then redis.call('DEL', cur[2]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[3], '')
return 1
""")

#: KEYS: record, log, buffer. ARGV: tenant, task id, attempt, seq, ttl ms, safety ttl ms,
#: wake channel, then the step: terminal ('1'/'0'), status, at, log entry, result/error blob.
#: Returns 0 ignored, 1 applied, 2 buffered (same rules as ``_steps.Cursor``).
APPLY = Script("""
local rec, log, buf = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', rec, 'tn', 'st', 'ca', 'ns', 'ik')
if cur[1] ~= ARGV[1] then return 0 end
if cur[2] == 'succeeded' or cur[2] == 'failed' then return 0 end
local attempt, seq = tonumber(ARGV[3]), tonumber(ARGV[4])
local ca, ns = tonumber(cur[3] or '0'), tonumber(cur[4] or '0')
if attempt < ca then return 0 end
if attempt > ca then
  ca, ns = attempt, 0
  redis.call('DEL', buf)
  redis.call('HSET', rec, 'ca', ca, 'ns', ns)
end
if seq < ns then return 0 end
local step = {ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]}
if step[1] ~= '1' and seq > ns then
  if redis.call('HSETNX', buf, seq, cmsgpack.pack(step)) == 0 then return 0 end
  redis.call('PEXPIRE', buf, ARGV[6])
  return 2
end
local function commit(s)
  if redis.call('RPUSH', log, s[4]) == 1 then redis.call('PEXPIRE', log, ARGV[6]) end
  redis.call('HSETNX', rec, 'sa', s[3])
  if s[1] == '1' then
    local field = 'e'
    if s[2] == 'succeeded' then field = 'r' end
    redis.call('HSET', rec, 'st', s[2], 'n', ca, 'fa', s[3], field, s[5])
  else
    redis.call('HSET', rec, 'st', s[2], 'n', ca)
  end
end
commit(step)
ns = seq + 1
if step[1] == '1' then
  redis.call('DEL', buf)
  redis.call('PEXPIRE', rec, ARGV[5])
  redis.call('PEXPIRE', log, ARGV[5])
  if cur[5] and redis.call('GET', cur[5]) == ARGV[2] then redis.call('PEXPIRE', cur[5], ARGV[5]) end
else
  while true do
    local packed = redis.call('HGET', buf, ns)
    if not packed then break end
    redis.call('HDEL', buf, ns)
    commit(cmsgpack.unpack(packed))
    ns = ns + 1
  end
end
redis.call('HSET', rec, 'ca', ca, 'ns', ns)
redis.call('PUBLISH', ARGV[7], '')
return 1
""")
