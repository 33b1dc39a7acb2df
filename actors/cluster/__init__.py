"""Shared state for many workers and instances: rate windows, the ledger, conversation leases.

With ``cluster.redis_url`` set, every worker of every instance that uses the same Redis (and the
same ``key_prefix``) shares, exactly:

* :class:`SharedRateWindow`: each provider's strict sliding 60 s request and token windows and its
  server-imposed pause;
* :class:`SharedLedger`: reservations (``max_cost_per_request``), the day's total
  (``daily_cost_limit``, settled + open reservations), each provider's daily limit and each
  turn's budget;
* :class:`ConversationLeases`: one turn of a conversation at a time, in order, with a fencing
  token.

Every decision is one Lua script (atomic in Redis, registered once and run by ``EVALSHA``) that
reads Redis's own clock (``TIME``), never the callers'. Every key has a TTL. :class:`RedisLink`
owns the connection (pipelined: calls are written as they come, those of one loop iteration in
one write, packed by hiredis, and answered in order; Redis runs them in that order);
:meth:`RedisLink.ping` is the ``/health`` probe.

Fault policy
------------
Redis **stopped, unreachable or frozen**: a connection that gives no reply for
``connect_timeout + op_timeout`` (1.5 s by default; a connection not made within it alike) is
stuck: every call waiting on it gives up, and the next call connects anew (one immediate retry,
on a new connection, only after a broken one). A connection that keeps answering is waited for,
up to 4 times that in all (the wait for one of the ``max_connections`` slots included): Redis is
slow then, or this process is, and an overloaded worker whose loop reads replies late is not an
outage. Redis **refusing** a command (an error reply meaning "not now": ``OOM`` at
``maxmemory`` with ``noeviction``, ``BUSY`` while a script runs past ``busy-reply-threshold``,
``READONLY``, ``LOADING``) is an outage too, at once. A call that gives up raises
:class:`ClusterUnavailable` (``retryable = True``, ``error_type = "unavailable"``), and the
caller fails closed:

* **budgets fail closed**: no reservation without Redis; the request ends with the typed
  ``unavailable`` error. Spending money we cannot count would break invariant 2. A worker may
  still grant from its money allowance (:meth:`SharedLedger.allow`: counted in Redis) until a
  tenth of ``reservation_ttl`` before Redis can expire it, counted from when its last renewal
  Redis ran was *sent*; once empty or past that, it fails closed. A reservation or allowance
  Redis expires unsettled (its settle or renewal never came) is charged what it held, never
  given back: a request drawn from it may still run and be billed.
* **rate limits fail closed**: no admission without Redis. A "conservative local share"
  (``limit / N``) needs N, the number of live instances, which only Redis knows; a guessed N
  overshoots when instances were added, and refusing costs little since the budget (which a
  request needs too) is unavailable anyway. A ``sent``/``refund`` that fails is harmless:
  the permit counts as sent at ``in_flight_ttl`` after admission at the latest (so the server
  stamps in the background, :meth:`SharedRateWindow.sent_soon`). Permits leased ahead
  (:meth:`SharedRateWindow.admit` ``extra``, counted in flight) may still be used within
  ``permit_lease`` of their grant; a pause reaches a worker's pool at most that late.
* **leases fail closed**: no new turn starts without a lease. A running turn whose renewals
  fail is cancelled (:class:`LeaseLost`) by a timer a tenth of ``lease_ttl`` before the lease
  can expire in Redis, counted from when its last successful renewal (or its grant) was *sent*
  (Redis ran it no earlier): nobody else can have been granted it before then, provided the
  turn reaches a checkpoint within that tenth (cancellation is cooperative; a history write
  already in a thread finishes).

Recovery is automatic: the next call opens a new connection; a script lost with a restarted
server is sent whole (``EVAL``) after its ``NOSCRIPT``.

Redis **restarted empty** (no persistence, or a failover that lost writes):

* *Ledger*: open reservations and day totals are lost. Every instance re-seeds
  (``seed_day_total``) from its durable journal (SQLite: its settled spend of the day and the
  reservations it still holds) at its next reserve and on a timer (``journal_interval``). Budgets
  fail closed meanwhile: Redis keeps an epoch marker, and a ledger without one (restarted empty,
  or first use: the two look alike) grants no money under a day or provider limit for ``2 x
  journal_interval + op_timeout`` from the first call that notices, the time every live
  instance's timer needs to bring its journal back; reserves wait that window out (2.5 s by
  default) instead of counting on a day that still misses an instance's spend. A settle of a
  lost reservation is still charged (``late``). An instance frozen through the whole window
  (SIGSTOP, a long GC pause) brings its journal late, and the day can then pass its limit by
  what that instance spent before the loss and others spent in the window.
* *Rate windows*: the requests sent in the last window are forgotten, so in the first window
  after the loss the upstream could receive up to one more window's worth. With
  ``rate_quarantine_on_loss`` a provider whose windows were lost is paused for one window from
  the loss (exact, at the price of a minute without that provider): a worker that saw the windows
  (their ``born`` marker) and finds them recreated pauses the provider until one window after
  the recreation, once. A first use (no worker saw them) is no loss, and a worker started after
  the loss cannot tell (it pauses nothing; the workers that saw the old windows still do). A
  day without traffic expires the marker, which counts as a loss. Otherwise the provider's own
  429 + ``Retry-After`` pauses everyone.
* *Leases*: lost; running turns lose them at their next renewal (:class:`LeaseLost`), and fencing
  tokens restart under a new lease epoch (:attr:`Lease.epoch`; likewise after a day unused):
  tokens compare only within one epoch, and a holder from before the loss can neither renew nor
  release a lease granted after it.
"""

from ._config import RESERVATION_TTL, ClusterConfig, redact_url
from ._errors import ClusterError, ClusterUnavailable, LeaseLost
from ._leases import ConversationLeases, Lease, LeaseTimeout
from ._ledger import (
    DaySeed,
    LedgerLimits,
    OpenReservation,
    ReserveRefused,
    ReserveResult,
    SettleResult,
    SharedLedger,
)
from ._link import ClusterHealth, LuaScript, RedisLink
from ._rates import Admission, SharedRateWindow, WindowUsage

__all__ = [
    "RESERVATION_TTL",
    "Admission",
    "ClusterConfig",
    "ClusterError",
    "ClusterHealth",
    "ClusterUnavailable",
    "ConversationLeases",
    "DaySeed",
    "Lease",
    "LeaseLost",
    "LeaseTimeout",
    "LedgerLimits",
    "LuaScript",
    "OpenReservation",
    "RedisLink",
    "ReserveRefused",
    "ReserveResult",
    "SettleResult",
    "SharedLedger",
    "SharedRateWindow",
    "WindowUsage",
    "redact_url",
]
