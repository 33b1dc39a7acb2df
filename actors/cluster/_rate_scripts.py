"""Lua of the shared sliding windows (one provider's keys share one hash slot).

Times are integer microseconds of Redis's own clock (``TIME``), so every instance decides by one
clock and the window test ``stamp + window <= now`` is exact. Keys: ``state`` (a hash of running
totals, the pause, the permit sequence and the TTL bookkeeping: each script reads it in one
``HMGET`` and writes it back in one ``HSET``), ``stamped`` (permit -> stamp time), ``inflight``
(permit -> the time it counts as sent at the latest), ``amounts`` (permit -> tokens), ``born``
(present while Redis has held this provider's windows continuously).
"""

from __future__ import annotations

__all__ = ["ADMIT", "PAUSE", "REFUND", "SENT", "USAGE"]

_PRELUDE = """
local state, stamped, inflight, amounts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The state's numbers are read in one call and written back in one (flush): a script is atomic.
local FIELDS = {'inflight_req', 'inflight_tok', 'stamped_req', 'stamped_tok', 'pause_until',
                'seq', 'kept_until', 'expires_at'}
local s, dirty = {}, {}
local read = redis.call('HMGET', state, unpack(FIELDS))
for i, field in ipairs(FIELDS) do s[field] = tonumber(read[i] or '0') end
local function num(field) return s[field] end
local function set(field, value) s[field] = value; dirty[field] = true end
local function move(field, delta) set(field, s[field] + delta) end
local function flush()
  local pairs_ = {}
  for field in pairs(dirty) do
    -- %d: Lua's -0 would print as "-0".
    pairs_[#pairs_ + 1] = field; pairs_[#pairs_ + 1] = string.format('%d', s[field])
  end
  if #pairs_ > 0 then redis.call('HSET', state, unpack(pairs_)) end
end
-- The four keys expire together (at expires_at, ms), refreshed at most once a minute
-- (kept_until, us), so they outlive their last use by at least their TTL minus a minute
-- (key_ttl_ms includes that minute). A key this call may have created (a zset or hash recreated
-- after it emptied) is given the same instant.
local fresh = {}
local function stamp_at(id, at)
  if s['stamped_req'] == 0 then fresh[2] = true end
  redis.call('ZADD', stamped, at, id)
end
local function expire(window)
  -- An admitted request whose sender vanished counts as sent at its deadline (conservative).
  if num('inflight_req') > 0 then
    local late = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'WITHSCORES')
    for i = 1, #late, 2 do
      local id = late[i]
      local n = tonumber(redis.call('HGET', amounts, id) or '0')
      redis.call('ZREM', inflight, id)
      stamp_at(id, late[i + 1])
      move('inflight_req', -1); move('inflight_tok', -n)
      move('stamped_req', 1); move('stamped_tok', n)
    end
  end
  if num('stamped_req') == 0 then return end
  local old = redis.call('ZRANGEBYSCORE', stamped, '-inf', now - window)
  for _, id in ipairs(old) do
    local n = tonumber(redis.call('HGET', amounts, id) or '0')
    redis.call('HDEL', amounts, id)
    move('stamped_req', -1); move('stamped_tok', -n)
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', stamped, '-inf', now - window) end
end
-- Writes the numbers back and the TTLs (ttl_ms nil: only a created key's; born_ttl_ms: also
-- KEYS[5]'s; force: refresh now, e.g. a pause longer than the TTL).
local function finish(ttl_ms, born_ttl_ms, force)
  flush()
  if ttl_ms ~= nil and (force or now >= num('kept_until')) then
    local pause = num('pause_until') - now
    if pause > 0 then ttl_ms = math.max(ttl_ms, math.floor(pause / 1000) + 60000) end
    local at = string.format('%d', math.floor(now / 1000) + ttl_ms)
    redis.call('HSET', state, 'kept_until', string.format('%d', now + 60000000), 'expires_at', at)
    for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], at) end
    if born_ttl_ms ~= nil then redis.call('PEXPIRE', KEYS[5], born_ttl_ms) end
    return
  end
  local at = string.format('%d', num('expires_at'))
  for i in pairs(fresh) do redis.call('PEXPIREAT', KEYS[i], at) end
end
"""

#: ARGV: tokens, rpm, tpm (0: unlimited), window_us, inflight_ttl_us, key_ttl_ms, quarantine
#: (0/1), born_ttl_ms, the born value the caller saw last ('' none), extra (permits
#: leased beyond the first, each counted in flight like it, for a worker's pool), extra_tokens
#: (each extra permit's tokens), share, lease_only (0/1). Extras are granted from what is left
#: beyond ``share x extra`` requests (and their tokens), at most 1 / share of it: the last stretch
#: of a window is never leased (there every request asks for its own permit), and a lease never
#: takes more than a share of what is left above it. lease_only '1': the first permit too (a
#: refill of the pool, nobody waits for it), under the same rule.
#: KEYS[5]: born. Returns {1, permit, now, born, extras} (the extras are permit + 1 ..
#: permit + extras) or {0, wait_us (-1: only when an in-flight request is sent, -2: a lease_only
#: that would take more than its share), now, born}.
#: A loss is a born value other than the caller's: a first use (no value seen) is none.
ADMIT = _PRELUDE + """
local tokens, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local key_ttl, born_ttl = tonumber(ARGV[6]), tonumber(ARGV[8])
local born
local function admit()
  expire(window)
  born = redis.call('GET', KEYS[5])
  local lost = false
  if not born then
    born = string.format('%d', now)
    redis.call('SET', KEYS[5], born, 'PX', born_ttl)
  end
  local known = ARGV[9]
  if ARGV[7] == '1' and known ~= '' and known ~= born
      and redis.call('HGET', state, 'loss_seen') ~= born then
    -- Windows lost since this caller saw them (a restarted, empty Redis): requests sent in the
    -- last window are unknown. One window from the loss, whoever notices it first.
    redis.call('HSET', state, 'loss_seen', born)
    lost = true
    local quarantine = tonumber(born) + window
    if quarantine > num('pause_until') then set('pause_until', quarantine) end
  end
  local wait = num('pause_until') - now
  if wait > 0 then return {0, wait, now, born}, lost end
  wait = 0
  local excess = num('inflight_req') + num('stamped_req') + 1 - rpm
  if rpm > 0 and excess > 0 then
    local entry = redis.call('ZRANGE', stamped, excess - 1, excess - 1, 'WITHSCORES')
    if #entry == 0 then return {0, -1, now, born}, lost end
    wait = math.max(wait, tonumber(entry[2]) + window - now)
  end
  excess = num('inflight_tok') + num('stamped_tok') + tokens - tpm
  if tpm > 0 and tokens > 0 and excess > 0 then
    local start = 0
    while true do
      local batch = redis.call('ZRANGE', stamped, start, start + 99, 'WITHSCORES')
      if #batch == 0 then return {0, -1, now, born}, lost end
      for i = 1, #batch, 2 do
        excess = excess - tonumber(redis.call('HGET', amounts, batch[i]) or '0')
        if excess <= 0 then
          wait = math.max(wait, tonumber(batch[i + 1]) + window - now)
          if wait > 0 then return {0, wait, now, born}, lost end
          return nil, lost
        end
      end
      start = start + 100
    end
  end
  if wait > 0 then return {0, wait, now, born}, lost end
  return nil, lost
end
local extra, extra_tokens = tonumber(ARGV[10] or '0'), tonumber(ARGV[11] or '0')
local share = tonumber(ARGV[12] or '1')
-- How many of `wanted` permits of n tokens each a lease may take (see ADMIT's comment).
local function spare(n, wanted)
  local count = wanted
  if rpm > 0 then
    local left = rpm - num('inflight_req') - num('stamped_req') - share * extra
    count = math.min(count, math.floor(left / share))
  end
  if tpm > 0 and n > 0 then
    local left = tpm - num('inflight_tok') - num('stamped_tok') - share * extra * n
    count = math.min(count, math.floor(left / (share * n)))
  end
  return math.max(count, 0)
end
local answer, lost = admit()
if answer == nil and ARGV[13] == '1' and spare(tokens, 1) < 1 then
  answer = {0, -2, now, born}
end
local function grant(n)
  move('seq', 1)
  local id = string.format('%d', num('seq'))
  if num('inflight_req') == 0 then fresh[3] = true end
  if num('inflight_req') + num('stamped_req') == 0 then fresh[4] = true end
  redis.call('ZADD', inflight, now + ttl, id)
  redis.call('HSET', amounts, id, n)
  move('inflight_req', 1); move('inflight_tok', n)
  return id
end
if answer == nil then
  local id = grant(tokens)
  local extras = spare(extra_tokens, extra)
  for _ = 1, extras do grant(extra_tokens) end
  answer = {1, id, now, born, extras}
end
finish(key_ttl, born_ttl, lost)
return answer
"""

#: ARGV: permit, window_us, key_ttl_ms, tokens (optional: an in-flight permit holding more, a
#: leased one, counts only these from now). Returns 1 if stamped now, 0 if unknown.
SENT = _PRELUDE + """
local id = ARGV[1]
expire(tonumber(ARGV[2]))
local answer = 0
if redis.call('ZSCORE', inflight, id) then
  local n = tonumber(redis.call('HGET', amounts, id) or '0')
  local used = tonumber(ARGV[4] or '-1')
  if used >= 0 and used < n then
    redis.call('HSET', amounts, id, used)
    move('inflight_tok', used - n)
    n = used
  end
  redis.call('ZREM', inflight, id)
  stamp_at(id, now)
  move('inflight_req', -1); move('inflight_tok', -n)
  move('stamped_req', 1); move('stamped_tok', n)
  answer = 1
elseif redis.call('ZSCORE', stamped, id) then
  -- Sent after its in-flight deadline: it counts from now, not from the deadline.
  redis.call('ZADD', stamped, 'GT', now, id)
  answer = 1
end
finish(tonumber(ARGV[3]))
return answer
"""

#: ARGV: permit, window_us, more permits. Returns how many in-flight permits were forgotten.
REFUND = _PRELUDE + """
expire(tonumber(ARGV[2]))
local answer = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  if i ~= 2 and redis.call('ZSCORE', inflight, id) then
    local n = tonumber(redis.call('HGET', amounts, id) or '0')
    redis.call('ZREM', inflight, id)
    redis.call('HDEL', amounts, id)
    move('inflight_req', -1); move('inflight_tok', -n)
    answer = answer + 1
  end
end
finish(nil)
return answer
"""

#: ARGV: seconds as us, key_ttl_ms. Returns the pause left in us.
PAUSE = _PRELUDE + """
local wanted = now + tonumber(ARGV[1])
if wanted > num('pause_until') then set('pause_until', wanted) end
finish(tonumber(ARGV[2]), nil, true)
return num('pause_until') - now
"""

#: ARGV: window_us. Returns {requests, tokens, pause_us, in-flight requests}.
USAGE = _PRELUDE + """
expire(tonumber(ARGV[1]))
finish(nil)
return {num('inflight_req') + num('stamped_req'), num('inflight_tok') + num('stamped_tok'),
        math.max(0, num('pause_until') - now), num('inflight_req')}
"""
