"""Lua of the shared ledger (every ledger key shares one hash slot: ``{ledger}``).

Money is integer nano-USD (exact in Lua's doubles below 9e15, i.e. $9 million). Keys: ``open``
(request -> expiry ms), ``resv`` (request -> ``amount|provider|turn key``), ``reserved`` (running
totals of open reservations: ``total``, ``p:<provider>``; and the TTL bookkeeping:
``kept_until``, ``expires_at``), ``day`` (settled on that day:
``settled``, ``p:<provider>``, and one ``seed:<instance>`` marker per instance that added its
journal), ``turn`` (``settled``, ``reserved`` of one turn), ``ended`` (request -> ms: settled or
released, so a repeated settle never charges twice), ``epoch`` (``born`` and ``open_at``: when Redis
first held this ledger, and from when it grants money: see :data:`RESERVE`), ``lapsed``
(request -> ``day key|amount|provider|turn key``: reservations that expired unsettled). A
worker's allowance (:data:`ALLOW`) is one open reservation like any other (``resv``, ``open``,
counted in ``reserved``): it expires with its TTL when its worker stops renewing it.

**A reservation that expires unsettled is charged what it held** (to the day of the call that
finds it expired): its settle never came (a timeout, a restart, a full mailbox, a worker cut off
or dead) but the upstream may have billed it, so the money is not given back to the day, as the
local ledger charges it. It is marked ended (a repeated reserve, a release and a seed leave it
alone) and remembered in ``lapsed`` for ``2 x reservation_ttl`` (trimmed with ``ended``): a late
settle adds what its cost passes the charge by (less is not given back, as in the local ledger),
and an allowance's next resize (its worker was only cut off) takes its charge back, the worker
pushing what it spent and holding what is out.
"""

from __future__ import annotations

__all__ = ["ALLOW", "RELEASE", "RESERVE", "SEED", "SETTLE"]

_PRELUDE = """
local open, resv, reserved, day, turn, ended = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local epoch, lapsed = KEYS[7], KEYS[8]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(key, field) return tonumber(redis.call('HGET', key, field) or '0') end
local function forget(id, record)
  -- Greedy: a provider's name may hold '|' (any key of llm.providers); a turn key never does.
  local amount, provider, turn_key = string.match(record, '^(%d+)|(.*)|([^|]*)$')
  local minus = '-' .. amount  -- the stored digits: exact, and never Lua's '-0'
  if amount ~= '0' then  -- Redis refuses '-0' as an integer
    redis.call('HINCRBY', reserved, 'total', minus)
    redis.call('HINCRBY', reserved, 'p:' .. provider, minus)
    if turn_key ~= '' then redis.call('HINCRBY', turn_key, 'reserved', minus) end
  end
  amount = tonumber(amount)
  redis.call('HDEL', resv, id)
  redis.call('ZREM', open, id)
  return amount, provider, turn_key
end
local function charge_day(day_key, provider, turn_key, digits, day_ttl)
  -- The keys may be new (a day's first call) or gone (a late settle): each keeps a TTL.
  redis.call('HINCRBY', day_key, 'settled', digits)
  redis.call('HINCRBY', day_key, 'p:' .. provider, digits)
  redis.call('PEXPIRE', day_key, day_ttl)
  if turn_key ~= '' then
    redis.call('HINCRBY', turn_key, 'settled', digits)
    redis.call('PEXPIRE', turn_key, day_ttl)
  end
end
local function lapse(id, record, day_ttl)
  -- Expired unsettled: charged what it held (the upstream may have billed it), not given back.
  local amount, provider, turn_key = forget(id, record)
  if amount > 0 then
    charge_day(day, provider, turn_key, string.format('%d', amount), day_ttl)
  end
  redis.call('HSET', lapsed, id, day .. '|' .. record)
  redis.call('ZADD', ended, now, id)
end
local function unlapse(id, day_ttl, actual)
  -- What lapsed is known after all: a settle's `actual` cost beyond the charge is added (less is
  -- not given back, as the local ledger journaled it); nil (its allowance's worker is back and
  -- accounts for itself): the charge is taken back. Returns the amount it held.
  local gone = redis.call('HGET', lapsed, id)
  if not gone then return nil end
  local day_key, amount, provider, turn_key = string.match(gone, '^([^|]*)|(%d+)|(.*)|([^|]*)$')
  local delta = -tonumber(amount)
  if actual ~= nil then delta = math.max(actual + delta, 0) end
  if delta ~= 0 then
    charge_day(day_key, provider, turn_key, string.format('%d', delta), day_ttl)
  end
  redis.call('HDEL', lapsed, id)
  return tonumber(amount)
end
local function sweep(res_ttl, day_ttl, lazy)
  -- Reservations of an instance that died (or whose settle never came) stop holding money
  -- after their TTL: charged to the day.
  local lapses = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', open, '-inf', now)) do
    local record = redis.call('HGET', resv, id)
    if record then
      lapse(id, record, day_ttl)
      lapses = lapses + 1
    else
      redis.call('ZREM', open, id)
    end
  end
  if lapses > 0 then  -- a lazy call refreshes no TTL (keep): these keys may be new
    for _, key in ipairs({lapsed, ended}) do redis.call('PEXPIRE', key, 2 * res_ttl + 60000) end
  end
  -- The ended marks only stop a repeated settle: trimmed with the TTL refresh (keep), and the
  -- lapsed records with them.
  if not lazy then
    local before = now - 2 * res_ttl
    if redis.call('HLEN', lapsed) > 0 then
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', ended, '-inf', before)) do
        redis.call('HDEL', lapsed, id)
      end
    end
    redis.call('ZREMRANGEBYSCORE', ended, '-inf', before)
  end
end
local function gathering(window, day_ttl)
  -- No epoch: first use, or Redis lost its data. Every instance offers its journal within
  -- `window` ms (its timer), so money is granted only from then on: until every journal is back
  -- in the day's total, a grant could pass the daily limit.
  local open_at = tonumber(redis.call('HGET', epoch, 'open_at') or '-1')
  if open_at < 0 then
    open_at = now + window
    redis.call('HSET', epoch, 'born', now, 'open_at', open_at)
    redis.call('PEXPIRE', epoch, day_ttl)
  end
  return open_at - now
end
-- open, resv, reserved and ended expire together (at expires_at, ms, in reserved); every
-- key's TTL is refreshed by each call but RESERVE, which refreshes at most once a minute
-- (kept_until) and otherwise gives a key it may have created the same instant (keep_lazy).
local function keep(res_ttl, day_ttl)
  local at = string.format('%d', now + 2 * res_ttl + 60000)
  redis.call('HSET', reserved, 'kept_until', string.format('%d', now + 60000), 'expires_at', at)
  for _, key in ipairs({open, resv, reserved, ended, lapsed}) do
    redis.call('PEXPIREAT', key, at)
  end
  redis.call('PEXPIRE', day, day_ttl)
  redis.call('PEXPIRE', epoch, day_ttl)
  if turn ~= day then redis.call('PEXPIRE', turn, day_ttl) end
end
"""

#: ARGV: request, amount, provider, max_per_request, daily, provider_daily, turn_limit (-1: none),
#: res_ttl_ms, day_ttl_ms, instance, has_turn (0/1), gathering window ms (-1: no shared limit
#: depends on other instances' journals, grant at once).
#: Returns {1, amount} granted (or already held), {0, reason, a, b} refused, {-1} ended,
#: {-2} this instance has not seeded the day yet, {-3, ms} the journals are still gathering
#: (first use, or Redis restarted empty): ask again in ms.
RESERVE = _PRELUDE + """
local id, amount, provider = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local per_request, daily, provider_daily = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local turn_limit, res_ttl, day_ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local has_turn = ARGV[11] == '1'
local pfield = 'p:' .. provider
local function numbers(key, ...)
  local values = redis.call('HMGET', key, ...)
  for i = 1, #values do values[i] = tonumber(values[i] or '0') end
  return values
end
-- The bookkeeping first: a sweep may change the totals, so they are read after it.
local kept = numbers(reserved, 'kept_until', 'expires_at')
local lazy = now < kept[1]
sweep(res_ttl, day_ttl, lazy)
local held = redis.call('HGET', resv, id)
if held then return {1, tonumber(string.match(held, '^(%d+)'))} end
if redis.call('ZSCORE', ended, id) then return {-1} end
local window = tonumber(ARGV[12])
if window >= 0 then
  local wait = gathering(window, day_ttl)
  if wait > 0 then return {-3, wait} end
end
local seeded, settled, p_settled = unpack(redis.call('HMGET', day, 'seed:' .. ARGV[10],
                                                    'settled', pfield))
if not seeded then return {-2} end
settled, p_settled = tonumber(settled or '0'), tonumber(p_settled or '0')
if per_request >= 0 and amount > per_request then return {0, 'request', amount, per_request} end
local open_total, p_open = unpack(numbers(reserved, 'total', pfield))
if daily >= 0 and settled + open_total + amount > daily then
  return {0, 'daily', settled, open_total}
end
if provider_daily >= 0 and p_settled + p_open + amount > provider_daily then
  return {0, 'provider', p_settled, p_open}
end
local turn_key = ''
local new_turn = false
if has_turn then
  turn_key = turn
  local t_settled, t_open = unpack(numbers(turn, 'settled', 'reserved'))
  if turn_limit >= 0 and t_settled + t_open + amount > turn_limit then
    return {0, 'turn', t_settled, t_open}
  end
  new_turn = t_settled == 0 and t_open == 0
  redis.call('HINCRBY', turn, 'reserved', amount)
end
redis.call('HSET', resv, id, ARGV[2] .. '|' .. provider .. '|' .. turn_key)
redis.call('ZADD', open, now + res_ttl, id)
redis.call('HSET', reserved, 'total', string.format('%d', open_total + amount),
           pfield, string.format('%d', p_open + amount))
if not lazy then
  keep(res_ttl, day_ttl)
else
  -- open and resv are empty when nothing is held: this call may have created them.
  local at = string.format('%d', kept[2])
  if open_total == 0 then
    redis.call('PEXPIREAT', open, at)
    redis.call('PEXPIREAT', resv, at)
  end
  if new_turn then redis.call('PEXPIRE', turn, day_ttl) end
end
return {1, amount}
"""

#: ARGV: request, actual, provider, res_ttl_ms, day_ttl_ms, has_turn (0/1), instance.
#: Returns {1, reserved amount} settled, {2, 0} charged without a reservation (lost with Redis's
#: data, or expired so long ago that its record is gone), {3, reserved amount} expired unsettled
#: and charged that amount: what ``actual`` passes it by is added (less is not given back),
#: {0, 0} already ended (nothing charged), {-2, 0} this instance has not seeded the day: after
#: Redis lost its data, the instance's journal (which holds this charge unless the instance is
#: still telling Redis of it) must come back first, else the charge counts twice.
SETTLE = _PRELUDE + """
local id, actual, provider = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local res_ttl, day_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
sweep(res_ttl, day_ttl)
if redis.call('ZSCORE', ended, id) then
  -- Expired unsettled, charged what it held: what the cost passes that by is added, once.
  local held = unlapse(id, day_ttl, actual)
  if held == nil then return {0, 0} end
  keep(res_ttl, day_ttl)
  return {3, held}
end
if not redis.call('HGET', day, 'seed:' .. ARGV[7]) then return {-2, 0} end
local record = redis.call('HGET', resv, id)
local status, amount = 2, 0
if record then
  status = 1
  amount, provider = forget(id, record)
end
redis.call('HINCRBY', day, 'settled', actual)
redis.call('HINCRBY', day, 'p:' .. provider, actual)
if ARGV[6] == '1' then redis.call('HINCRBY', turn, 'settled', actual) end
redis.call('ZADD', ended, now, id)
keep(res_ttl, day_ttl)
return {status, amount}
"""

#: ARGV: request, res_ttl_ms, day_ttl_ms, sweep (1: KEYS[4] is the caller's day, what expired is
#: charged to it; 0: no day known, no sweep). Returns 1 if an open reservation was released (one
#: that expired unsettled stays charged).
RELEASE = _PRELUDE + """
local id, res_ttl = ARGV[1], tonumber(ARGV[2])
if ARGV[4] == '1' then sweep(res_ttl, tonumber(ARGV[3])) end
if redis.call('ZSCORE', ended, id) then return 0 end
local record = redis.call('HGET', resv, id)
if record then forget(id, record) end
redis.call('ZADD', ended, now, id)
keep(res_ttl, tonumber(ARGV[3]))
if record then return 1 end
return 0
"""

#: ARGV: instance, settled, res_ttl_ms, day_ttl_ms, gathering window ms, n_providers, then n
#: (provider, settled) pairs, then (request, amount, provider, turn key) quads of the instance's
#: open reservations. Returns 1 if seeded now, 0 if this instance had seeded this day already.
#: A seed that finds no epoch starts the gathering (the first timer after a loss notices it).
SEED = _PRELUDE + """
local marker, res_ttl, day_ttl = 'seed:' .. ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
gathering(tonumber(ARGV[5]), day_ttl)
if redis.call('HEXISTS', day, marker) == 1 then return 0 end
redis.call('HSET', day, marker, now)
redis.call('HINCRBY', day, 'settled', ARGV[2])
local n = tonumber(ARGV[6])
local i = 7
for _ = 1, n do
  redis.call('HINCRBY', day, 'p:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i + 3 <= #ARGV do
  local id, amount, provider, turn_key = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  if redis.call('HEXISTS', resv, id) == 0 and not redis.call('ZSCORE', ended, id) then
    redis.call('HSET', resv, id, ARGV[i + 1] .. '|' .. provider .. '|' .. turn_key)
    redis.call('ZADD', open, now + res_ttl, id)
    redis.call('HINCRBY', reserved, 'total', amount)
    redis.call('HINCRBY', reserved, 'p:' .. provider, amount)
    if turn_key ~= '' then redis.call('HINCRBY', turn_key, 'reserved', amount) end
  end
  i = i + 4
end
keep(res_ttl, day_ttl)
return 1
"""

#: A worker's allowance for one provider: money it grants its requests from without a call. ARGV:
#: allowance id, provider, charge (settled locally since the last call: moved to the day), out (what
#: the worker's open requests drew from it: kept), carry (the free part the worker may still draw
#: from until this answer: kept), want (the free part wished), min_free (a smaller free part is
#: none), daily, provider_daily (-1: none), res_ttl_ms, day_ttl_ms, instance, gathering window ms
#: (-1: none), share divisor, call number, then (call, charge) pairs: the charges of earlier calls
#: whose answer was lost (charged now unless that call ran). An allowance that expired (its
#: worker was cut off longer than its TTL) was charged its whole hold: its worker's next call
#: takes that charge back (it pushes what it spent and keeps what is out). KEYS[9]: the
#: allowance's last call
#: number: a call older than the last one that ran (written on a connection that broke, run late)
#: changes nothing and answers {0, 0}. The new hold is ``out + max(carry, free)``, where ``free`` is
#: ``want`` while it is at most ``1 / share`` of ``room - out`` (``room``: the limits' room without
#: this allowance) and at least ``min_free``, else 0: a free part never takes more than a share of
#: what is left, and near a limit (a room below ``share x want``) the worker reserves per request.
#: Returns {1, hold, free} (a free part below ``carry``: the worker gives the rest back), {-2} (this
#: instance has not seeded the day), {-3, ms} (gathering: nothing changed).
ALLOW = _PRELUDE + """
local id, provider = ARGV[1], ARGV[2]
local charge, out, carry = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local want, min_free = tonumber(ARGV[6]), tonumber(ARGV[7])
local daily, provider_daily = tonumber(ARGV[8]), tonumber(ARGV[9])
local res_ttl, day_ttl, divisor = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[14])
local pfield = 'p:' .. provider
sweep(res_ttl, day_ttl)
local window = tonumber(ARGV[13])
if window >= 0 then
  local wait = gathering(window, day_ttl)
  if wait > 0 then return {-3, wait} end
end
if not redis.call('HGET', day, 'seed:' .. ARGV[12]) then return {-2} end
local last = tonumber(redis.call('GET', KEYS[9]) or '0')
if tonumber(ARGV[15]) <= last then return {0, 0} end
redis.call('SET', KEYS[9], ARGV[15], 'PX', 2 * res_ttl + 60000)
-- Charges of earlier calls whose answer was lost: each is charged by the first call to run
-- after it that finds it did not run (a call older than the last one never runs later).
for i = 16, #ARGV, 2 do
  if tonumber(ARGV[i]) > last then charge = charge + tonumber(ARGV[i + 1]) end
end
local record = redis.call('HGET', resv, id)
if record then
  forget(id, record)
elseif unlapse(id, day_ttl) then
  redis.call('ZREM', ended, id)
end
if charge > 0 then
  local digits = string.format('%d', charge)
  redis.call('HINCRBY', day, 'settled', digits)
  redis.call('HINCRBY', day, pfield, digits)
end
local settled, p_settled = unpack(redis.call('HMGET', day, 'settled', pfield))
local open_total, p_open = unpack(redis.call('HMGET', reserved, 'total', pfield))
local room = nil
if daily >= 0 then
  room = daily - tonumber(settled or '0') - tonumber(open_total or '0')
end
if provider_daily >= 0 then
  local p_room = provider_daily - tonumber(p_settled or '0') - tonumber(p_open or '0')
  if room == nil or p_room < room then room = p_room end
end
local free = want
if room ~= nil and room - out < divisor * want then free = 0 end
if free < min_free then free = 0 end
local hold = out + math.max(carry, free)
if hold > 0 then
  local digits = string.format('%d', hold)
  redis.call('HSET', resv, id, digits .. '|' .. provider .. '|')
  redis.call('ZADD', open, now + res_ttl, id)
  redis.call('HINCRBY', reserved, 'total', digits)
  redis.call('HINCRBY', reserved, pfield, digits)
end
keep(res_ttl, day_ttl)
return {1, hold, free}
"""
