"""Lua of conversation leases (one conversation's keys share one hash slot).

Keys: ``holder`` (a hash ``owner``, ``token``, ``epoch``, ``ticket``; its Redis TTL is the lease: a
dead owner's lease simply expires), ``fence`` (the token counter: never reset while the
conversation is in use), ``tickets`` (the counter that numbers waiters), ``queue`` (ticket ->
its number: FIFO order), ``alive`` (ticket -> ms after which a waiter that stopped polling is
dropped), ``epoch`` (a random id given when the fence is created). A ticket is the waiter's own
random id, the same for every poll of one wait: an ``ACQUIRE`` sent again (its reply was lost
with its connection) keeps its place, or gets back the lease it was granted. A fence lost with
Redis's data, or expired after a day unused, restarts at 0 under a new epoch: a token is never
reused within one epoch, and a lease is its token *and* epoch (a holder from before the loss
renews or releases nothing).
"""

from __future__ import annotations

__all__ = ["ABANDON", "ACQUIRE", "RELEASE", "RENEW"]

_PRELUDE = """
local holder, fence, tickets, queue, alive, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(ttl_ms)
  for i = 2, 6 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
"""

#: ARGV: owner, ticket (random), lease_ttl_ms, waiter_ttl_ms, keep_ms. Returns {1, token, epoch}
#: granted (again, to the ticket it was granted to) or {0, lease ms left (-1: others queued
#: first)}.
ACQUIRE = _PRELUDE + """
local owner, ticket = ARGV[1], ARGV[2]
local lease_ttl, waiter_ttl, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local granted = redis.call('HMGET', holder, 'ticket', 'token', 'epoch')
if granted[1] == ticket then return {1, tonumber(granted[2]), granted[3]} end
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
  redis.call('ZREM', queue, dead)
  redis.call('ZREM', alive, dead)
end
if not redis.call('ZSCORE', queue, ticket) then
  redis.call('ZADD', queue, redis.call('INCR', tickets), ticket)
end
redis.call('ZADD', alive, now + waiter_ttl, ticket)
keep(keep_ms)
local left = redis.call('PTTL', holder)
if left > 0 then return {0, left} end
local head = redis.call('ZRANGE', queue, 0, 0)[1]
if head ~= ticket then return {0, -1} end
if redis.call('EXISTS', fence, epoch) < 2 then
  redis.call('SET', epoch, ticket)  -- the fence restarts (or starts): a new (random) epoch
end
local token = redis.call('INCR', fence)
local era = redis.call('GET', epoch)
keep(keep_ms)  -- again: the fence and the epoch may be new
redis.call('DEL', holder)
redis.call('HSET', holder, 'owner', owner, 'token', token, 'epoch', era, 'ticket', ticket)
redis.call('PEXPIRE', holder, lease_ttl)
redis.call('ZREM', queue, ticket)
redis.call('ZREM', alive, ticket)
return {1, token, era}
"""

_HELD = """
local function held(token, era)
  local lease = redis.call('HMGET', holder, 'token', 'epoch')
  return lease[1] == token and lease[2] == era
end
"""

#: ARGV: token, epoch, lease_ttl_ms, keep_ms. Returns 1 if the lease is still ours (renewed),
#: else 0.
RENEW = _PRELUDE + _HELD + """
if not held(ARGV[1], ARGV[2]) then return 0 end
redis.call('PEXPIRE', holder, tonumber(ARGV[3]))
keep(tonumber(ARGV[4]))
return 1
"""

#: ARGV: token, epoch. Returns 1 if the lease was ours and is released, else 0.
RELEASE = _PRELUDE + _HELD + """
if not held(ARGV[1], ARGV[2]) then return 0 end
redis.call('DEL', holder)
return 1
"""

#: ARGV: ticket. A waiter gives up its place, and the lease if it was granted to this ticket
#: (a grant whose reply its waiter never read: cancelled, or failed with the reply on the wire).
ABANDON = _PRELUDE + """
redis.call('ZREM', queue, ARGV[1])
redis.call('ZREM', alive, ARGV[1])
if redis.call('HGET', holder, 'ticket') == ARGV[1] then redis.call('DEL', holder) end
return 1
"""
