"""Lua of the shared sliding windows (one provider's keys share one hash slot).

Times are integer microseconds of Redis's own clock (``TIME``), so every instance decides by one
clock and the window test ``stamp + window <= now`` is exact. Keys: ``state`` (a hash of running
totals, the pause and the permit sequence), ``stamped`` (permit -> stamp time), ``inflight``
(permit -> the time it counts as sent at the latest), ``amounts`` (permit -> tokens), ``born``
(present while Redis has held this provider's windows continuously).
"""

from __future__ import annotations

__all__ = ["ADMIT", "PAUSE", "REFUND", "SENT", "USAGE"]

_PRELUDE = """
local state, stamped, inflight, amounts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function num(field) return tonumber(redis.call('HGET', state, field) or '0') end
-- %d: Lua's -0 would print as "-0", which HINCRBY refuses.
local function move(field, delta)
  redis.call('HINCRBY', state, field, string.format('%d', delta))
end
local function expire(window)
  -- An admitted request whose sender vanished counts as sent at its deadline (conservative).
  local late = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'WITHSCORES')
  for i = 1, #late, 2 do
    local id = late[i]
    local n = tonumber(redis.call('HGET', amounts, id) or '0')
    redis.call('ZREM', inflight, id)
    redis.call('ZADD', stamped, late[i + 1], id)
    move('inflight_req', -1); move('inflight_tok', -n)
    move('stamped_req', 1); move('stamped_tok', n)
  end
  local old = redis.call('ZRANGEBYSCORE', stamped, '-inf', now - window)
  for _, id in ipairs(old) do
    local n = tonumber(redis.call('HGET', amounts, id) or '0')
    redis.call('HDEL', amounts, id)
    move('stamped_req', -1); move('stamped_tok', -n)
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', stamped, '-inf', now - window) end
end
local function keep(ttl_ms)
  local pause = num('pause_until') - now
  if pause > 0 then ttl_ms = math.max(ttl_ms, math.floor(pause / 1000) + 60000) end
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
"""

#: ARGV: tokens, rpm, tpm (0: unlimited), window_us, inflight_ttl_us, key_ttl_ms, quarantine
#: (0/1), born_ttl_ms, the born value the caller saw last ('' none). KEYS[5]: born. Returns
#: {1, permit, now, born} or {0, wait_us (-1: only when an in-flight request is sent), now, born}.
#: A loss is a born value other than the caller's: a first use (no value seen) is none.
ADMIT = _PRELUDE + """
local tokens, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local key_ttl, born_ttl = tonumber(ARGV[6]), tonumber(ARGV[8])
expire(window)
local born = redis.call('GET', KEYS[5])
if not born then
  born = string.format('%d', now)
  redis.call('SET', KEYS[5], born)
end
redis.call('PEXPIRE', KEYS[5], born_ttl)
local known = ARGV[9]
if ARGV[7] == '1' and known ~= '' and known ~= born
    and redis.call('HGET', state, 'loss_seen') ~= born then
  -- Windows lost since this caller saw them (a restarted, empty Redis): requests sent in the
  -- last window are unknown. One window from the loss, whoever notices it first.
  redis.call('HSET', state, 'loss_seen', born)
  local quarantine = tonumber(born) + window
  if quarantine > num('pause_until') then redis.call('HSET', state, 'pause_until', quarantine) end
end
local wait = num('pause_until') - now
if wait > 0 then keep(key_ttl); return {0, wait, now, born} end
wait = 0
local excess = num('inflight_req') + num('stamped_req') + 1 - rpm
if rpm > 0 and excess > 0 then
  local entry = redis.call('ZRANGE', stamped, excess - 1, excess - 1, 'WITHSCORES')
  if #entry == 0 then return {0, -1, now, born} end
  wait = math.max(wait, tonumber(entry[2]) + window - now)
end
excess = num('inflight_tok') + num('stamped_tok') + tokens - tpm
if tpm > 0 and tokens > 0 and excess > 0 then
  local found = false
  local start = 0
  while not found do
    local batch = redis.call('ZRANGE', stamped, start, start + 99, 'WITHSCORES')
    if #batch == 0 then return {0, -1, now, born} end
    for i = 1, #batch, 2 do
      excess = excess - tonumber(redis.call('HGET', amounts, batch[i]) or '0')
      if excess <= 0 then
        wait = math.max(wait, tonumber(batch[i + 1]) + window - now)
        found = true
        break
      end
    end
    start = start + 100
  end
end
if wait > 0 then return {0, wait, now, born} end
local id = redis.call('HINCRBY', state, 'seq', 1)
redis.call('ZADD', inflight, now + ttl, id)
redis.call('HSET', amounts, id, tokens)
move('inflight_req', 1); move('inflight_tok', tokens)
keep(key_ttl)
return {1, id, now, born}
"""

#: ARGV: permit, window_us, key_ttl_ms. Returns 1 if stamped now, 0 if unknown.
SENT = _PRELUDE + """
local id = ARGV[1]
expire(tonumber(ARGV[2]))
if redis.call('ZSCORE', inflight, id) then
  local n = tonumber(redis.call('HGET', amounts, id) or '0')
  redis.call('ZREM', inflight, id)
  redis.call('ZADD', stamped, now, id)
  move('inflight_req', -1); move('inflight_tok', -n)
  move('stamped_req', 1); move('stamped_tok', n)
  keep(tonumber(ARGV[3]))
  return 1
end
if redis.call('ZSCORE', stamped, id) then
  -- Sent after its in-flight deadline: it counts from now, not from the deadline.
  redis.call('ZADD', stamped, 'GT', now, id)
  keep(tonumber(ARGV[3]))
  return 1
end
return 0
"""

#: ARGV: permit, window_us. Returns 1 if the in-flight permit was forgotten, 0 otherwise.
REFUND = _PRELUDE + """
local id = ARGV[1]
expire(tonumber(ARGV[2]))
if redis.call('ZSCORE', inflight, id) then
  local n = tonumber(redis.call('HGET', amounts, id) or '0')
  redis.call('ZREM', inflight, id)
  redis.call('HDEL', amounts, id)
  move('inflight_req', -1); move('inflight_tok', -n)
  return 1
end
return 0
"""

#: ARGV: seconds as us, key_ttl_ms. Returns the pause left in us.
PAUSE = _PRELUDE + """
local wanted = now + tonumber(ARGV[1])
if wanted > num('pause_until') then redis.call('HSET', state, 'pause_until', wanted) end
keep(tonumber(ARGV[2]))
return num('pause_until') - now
"""

#: ARGV: window_us. Returns {requests, tokens, pause_us, in-flight requests}.
USAGE = _PRELUDE + """
expire(tonumber(ARGV[1]))
return {num('inflight_req') + num('stamped_req'), num('inflight_tok') + num('stamped_tok'),
        math.max(0, num('pause_until') - now), num('inflight_req')}
"""
