"""Lua of conversation leases (one conversation's keys share one hash slot).

Keys: ``holder`` (a hash ``owner``, ``token``; its Redis TTL is the lease: a dead owner's lease
simply expires), ``fence`` (the token counter: never reset while the conversation is in use, so a
token is never reused), ``tickets`` (the ticket counter), ``queue`` (ticket -> ticket number: FIFO
order), ``alive`` (ticket -> ms after which a waiter that stopped polling is dropped).
"""

from __future__ import annotations

__all__ = ["ABANDON", "ACQUIRE", "RELEASE", "RENEW"]

_PRELUDE = """
local holder, fence, tickets, queue, alive = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(ttl_ms)
  for i = 2, 5 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
"""

#: ARGV: owner, ticket ('' for a new one), lease_ttl_ms, waiter_ttl_ms, keep_ms.
#: Returns {1, ticket, token} granted or {0, ticket, lease ms left (-1: others queued first)}.
ACQUIRE = _PRELUDE + """
local owner, ticket = ARGV[1], ARGV[2]
local lease_ttl, waiter_ttl, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
  redis.call('ZREM', queue, dead)
  redis.call('ZREM', alive, dead)
end
if ticket == '' then
  ticket = tostring(redis.call('INCR', tickets))
end
redis.call('ZADD', queue, ticket, ticket)
redis.call('ZADD', alive, now + waiter_ttl, ticket)
keep(keep_ms)
local left = redis.call('PTTL', holder)
if left > 0 then return {0, ticket, left} end
local head = redis.call('ZRANGE', queue, 0, 0)[1]
if head ~= ticket then return {0, ticket, -1} end
local token = redis.call('INCR', fence)
redis.call('DEL', holder)
redis.call('HSET', holder, 'owner', owner, 'token', token)
redis.call('PEXPIRE', holder, lease_ttl)
redis.call('ZREM', queue, ticket)
redis.call('ZREM', alive, ticket)
return {1, ticket, token}
"""

#: ARGV: token, lease_ttl_ms, keep_ms. Returns 1 if the lease is still ours (renewed), else 0.
RENEW = _PRELUDE + """
if redis.call('HGET', holder, 'token') ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', holder, tonumber(ARGV[2]))
keep(tonumber(ARGV[3]))
return 1
"""

#: ARGV: token. Returns 1 if the lease was ours and is released, else 0.
RELEASE = _PRELUDE + """
if redis.call('HGET', holder, 'token') ~= ARGV[1] then return 0 end
redis.call('DEL', holder)
return 1
"""

#: ARGV: ticket. A waiter gives up its place.
ABANDON = _PRELUDE + """
redis.call('ZREM', queue, ARGV[1])
redis.call('ZREM', alive, ARGV[1])
return 1
"""
