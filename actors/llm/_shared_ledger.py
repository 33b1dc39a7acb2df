"""The ledger of one worker when the day's money is shared by every worker and instance.

:class:`SharedLedgerActor` is a :class:`LedgerActor` (its SQLite file stays this worker's durable
journal, its book this worker's reservations) that also holds every reservation in Redis
(:class:`actors.cluster.SharedLedger`), where ``daily_cost_limit`` and each provider's daily limit
are checked against the settled + reserved money of *all* senders in one atomic script.
``max_cost_per_request`` and the turn's limit are checked locally: a request's worst case does not
depend on other workers, and a turn runs in one worker (its conversation's lease).

A ``Reserve`` is granted only when both books grant it: the local check runs in the actor's loop,
then the shared one: from this worker's money allowance for the provider when it has room (money
Redis already holds for this worker: answered at once, no call; see :mod:`._shared_allowance`),
else in Redis, in a child task (so a slow Redis never stalls settles), and the local hold is
released when Redis refuses or is unavailable. A settle of a reservation drawn from the allowance
is pushed with the allowance's next resize. A reservation that expires unsettled is charged what
it held, in Redis (:mod:`actors.cluster._ledger_scripts`) as in the local ledger: one drawn from
the allowance is pushed as a charge when the local ledger expires it, and a late settle of any
adds what it cost beyond that. A settle answers at once from the local book and
is shared behind; a shared settle that fails is retried every second until Redis answers (until
then its reservation stays held in Redis, so the shared total never undercounts).

Redis restarted empty: every worker re-seeds the day from its journal (:meth:`_day_seed`: its
settled spend of the day and the reservations it still holds) at its first reserve, and within
``cluster.journal_interval`` on its own timer; Redis grants nothing until every journal had the
time to come back (:class:`actors.cluster.SharedLedger`), so an idle worker's spend is counted
again before a busy worker can spend it twice (the seed is once per worker and day: the timer
costs one round trip a second).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from actors.cluster import (
    ClusterUnavailable,
    DaySeed,
    LedgerLimits,
    RedisLink,
    ReserveResult,
    SharedLedger,
)
from actors.cluster import OpenReservation as SharedReservation
from runtime import Outcome

from ._catalog import ModelCatalog
from ._config import CostConfig
from ._errors import LLMCostLimitError
from ._ledger import LedgerActor
from ._ledger_book import OpenReservation, nanos, usd
from ._ledger_lock import LedgerUnavailable
from ._messages import Release, Reservation, Reserve, Settle
from ._provider_config import ProviderConfig
from ._shared_allowance import LIFETIME, Allowance, Resize, give_back

__all__ = ["SharedLedgerActor", "shared_limits"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Seconds between retries of shared settles that Redis did not take.
_RETRY_INTERVAL = 1.0
#: A stop pushes what Redis has not taken for at most this long (below the ledger's
#: shutdown_timeout), in at most _STOP_ATTEMPTS tries _STOP_RETRY seconds apart.
_STOP_PUSH = 3.0
_STOP_ATTEMPTS = 8
_STOP_RETRY = 0.1
#: Reservations drawn from an allowance that the local ledger expired, remembered for a late
#: settle (as many as the local ledger remembers swept ones).
_LAPSED_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class _PendingSettle:
    key: str
    charge: int
    provider: str
    day: str


def shared_limits(config: CostConfig, providers: Mapping[str, ProviderConfig]) -> LedgerLimits:
    """The limits Redis checks: the day's and each provider's day (the rest is local)."""
    return LedgerLimits(
        daily_cost_limit=None if config.daily_cost_limit is None else nanos(
            config.daily_cost_limit),
        provider_daily_limits={name: nanos(p.daily_cost_limit) for name, p in providers.items()
                               if p.daily_cost_limit is not None},
    )


class SharedLedgerActor(LedgerActor):
    """A :class:`LedgerActor` whose day totals are shared through Redis (module docstring).

    ``instance_id`` names this worker's journal (see :class:`SharedLedger`). Raises like the
    local ledger; Redis unavailable refuses reservations with :class:`LedgerUnavailable`.
    """

    def __init__(self, config: CostConfig, catalog: ModelCatalog, *, link: RedisLink,
                 instance_id: str, providers: Mapping[str, ProviderConfig] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(config, catalog, providers=providers, **kwargs)
        self._shared = SharedLedger(link, instance_id, self._day_journal,
                                    shared_limits(config, providers or {}))
        # Seconds between two offers of this worker's journal to the shared day (a no-op unless
        # Redis lost the day).
        self._seed_interval = link.config.journal_interval
        # Reservation ids restart with each process: a nonce keeps the shared keys unique.
        self._nonce = secrets.token_hex(4)
        self._unshared: list[_PendingSettle] = []  # failed: retried on a timer
        self._sharing: dict[str, _PendingSettle] = {}  # shared settles running
        self._retrying = False
        # Reservations Redis granted: only these are re-declared by a seed. One still waiting
        # for its answer must pass the limits, not ride in on the seed.
        self._granted: set[int] = set()
        # Releases and settles piped but not yet written to Redis (see _reserve_shared).
        self._unwritten = 0
        self._frees_written: anyio.Event | None = None  # set when the last of them is written
        # This worker's allowance per provider (see _shared_allowance): drawn from until
        # LIFETIME of the TTL after the last renewal Redis ran was sent, a tenth before Redis can
        # expire it (and an expired one is charged, so what was drawn stays counted).
        self._allowances: dict[str, Allowance] = {}
        self._fresh = link.config.reservation_ttl * LIFETIME if link.config.allowances else -1.0
        # Drawn reservations the local ledger expired (charged to their allowance): id -> amount.
        self._lapsed: dict[int, int] = {}

    def _key(self, reservation_id: int) -> str:
        return f"{self._nonce}:{reservation_id}"

    async def _day_journal(self, day: str) -> DaySeed:
        """What this worker's journal says about ``day`` (Redis asks after losing its data).

        Raises :class:`ClusterUnavailable` while the journal is unread (its database could not be
        opened since the process started): seeded then, the empty book would mark the journal as
        counted, and the day would never count what the file holds."""
        if not self._book.read:
            raise ClusterUnavailable("ledger seed", "this worker's journal is not read yet")
        return self._day_seed(day)

    def _day_seed(self, day: str) -> DaySeed:
        book = self._book
        by_provider = dict(book.by_provider) if book.day == day else {}
        # What Redis is still to be told (a settle shared behind its answer or retried, an
        # allowance's charges for its next resize) is not seeded: it reaches Redis on its own
        # (a settle of a reservation Redis lost counts as a late charge), and seeded too it
        # counted twice.
        unsent = [(pending.provider, pending.charge)
                  for pending in (*self._sharing.values(), *self._unshared) if pending.day == day]
        if book.day == day:
            for provider, allowance in self._allowances.items():
                # Charged by its next resize: the one in flight, or else the next (unsure
                # charges too: Redis lost the record of the calls that ran).
                unsent.append((provider, allowance.unshared + sum(
                    charge for _, charge in allowance.unsure)))
                if allowance.resizing is not None:
                    unsent.append((provider, allowance.resizing.charge))
        for provider, charge in unsent:
            if provider in by_provider:
                by_provider[provider] = max(0, by_provider[provider] - charge)
        held = [SharedReservation(self._key(rid), entry.amount, entry.provider)
                for rid, entry in book.open.items() if rid in self._granted]
        held += [SharedReservation(allowance.key, allowance.held, provider)
                 for provider, allowance in self._allowances.items() if allowance.held > 0]
        return DaySeed(sum(by_provider.values()), by_provider, held)

    async def on_start(self) -> None:
        await super().on_start()
        self._arm_seed()

    async def on_stop(self) -> None:
        """Push what Redis has not taken yet (the settles still shared behind their answers, the
        allowances' charges) and give the allowances' free parts back, retried for up to
        :data:`_STOP_PUSH` seconds: a slow round trip on a loaded machine must not lose the
        charges of a graceful stop. What is still not taken then: an allowance's hold returns
        at its TTL; its charges count again only through a seed of this worker's journal."""
        day = self._book.day
        settles = [*self._sharing.values(), *self._unshared]
        allowances = [(provider, allowance) for provider, allowance in self._allowances.items()
                      if allowance.held or allowance.unshared or allowance.unsure
                      or allowance.syncing]
        for _, allowance in allowances:
            if allowance.resizing is not None:  # cancelled with the instance: it may have run
                allowance.finish(allowance.resizing, False, None)
        with anyio.move_on_after(_STOP_PUSH):
            for _ in range(_STOP_ATTEMPTS):
                settles = [item for item in settles if not await self._settle_now(item)]
                allowances = [item for item in allowances
                              if not await give_back(self._shared, day, *item,
                                                     self.context.clock.now())]
                if not settles and not allowances:
                    break
                await anyio.sleep(_STOP_RETRY)
        await super().on_stop()

    async def _settle_now(self, pending: _PendingSettle) -> bool:
        """Share ``pending`` now (idempotent); ``True`` unless Redis should be asked again."""
        with contextlib.suppress(anyio.ClosedResourceError):
            try:
                await self._shared.settle(pending.key, pending.charge, pending.provider,
                                          pending.day)
            except ClusterUnavailable:
                return False
        return True

    def immediate_messages(self) -> tuple[type, ...]:
        # An idle ledger takes a reservation in the asker's task, its Redis call included (no
        # mailbox trip, no child task).
        return (Reserve,)

    def handle_now(self, message: Any) -> Any:
        if isinstance(message, Reserve):
            return self._reserve_both(message)
        return super().handle_now(message)  # pragma: no cover - only Reserve is immediate

    def _reserve_both(self, message: Reserve) -> Reservation | None:
        """The local check now; then the allowance's free part (answered now, no call) or the
        shared check piped (its answer is the reservation)."""
        self._roll_day()
        reservation = self._reserve(message)
        entry = self._book.open[reservation.id]
        allowance = self._allowances.get(entry.provider)
        if allowance is None:
            allowance = self._allowances[entry.provider] = Allowance(
                f"alw:{self._nonce}:{entry.provider}")
        allowance.note(entry.amount)
        if entry.amount <= allowance.free() and (
                self.context.clock.now() - allowance.renewed < self._fresh):
            allowance.draw(reservation.id, entry.amount)
            if allowance.low():
                self._resize(entry.provider, allowance)
            return reservation
        if not allowance.syncing and not allowance.starved and self._fresh > 0:
            self._resize(entry.provider, allowance)  # for the next ones
        self.context.pipe(
            self._reserve_shared, self._key(reservation.id), entry.amount,
            entry.provider, self._book.day, reply_to=self.context.request,
            then=lambda outcome: self._reserved(reservation, outcome))
        return None

    def _drawn(self, reservation_id: int, provider: str) -> Allowance | None:
        """The allowance ``reservation_id`` drew from (it leaves it), or ``None``."""
        allowance = self._allowances.get(provider)
        if allowance is None or allowance.drawn.pop(reservation_id, None) is None:
            return None
        return allowance

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Reserve):
            return self._reserve_both(message)
        if isinstance(message, Settle):
            book = self._book
            held: OpenReservation | None = book.open.get(message.reservation_id)
            late = held is None
            if held is None:
                held = book.swept.get(message.reservation_id)
            # Late (expired, charged what it held): ``charged`` is what it cost beyond that.
            charged = await super().receive(message)
            self._granted.discard(message.reservation_id)
            allowance = None if held is None else self._drawn(message.reservation_id,
                                                              held.provider)
            if self._lapsed.pop(message.reservation_id, None) is not None and held is not None:
                # Its amount was charged to its allowance at its expiry: what it cost beyond is
                # pushed now (as the local ledger charges it).
                allowance = self._allowances.get(held.provider)
                if allowance is not None and charged:
                    allowance.unshared += nanos(charged)
                    self._resize(held.provider, allowance)
                return charged
            if allowance is not None and held is not None:
                if charged is not None:  # pushed with the next resize, at once if none runs
                    allowance.unshared += nanos(charged)
                    self._resize(held.provider, allowance)
                return charged
            if held is not None and charged is not None:
                # Redis charges a late one's whole cost (its reservation may still be open there:
                # it expires later) or, expired there too, what it cost beyond its amount.
                cost = nanos(charged) + (held.amount if late else 0)
                self._share_settle(_PendingSettle(self._key(message.reservation_id),
                                                  cost, held.provider, book.day))
            return charged
        if isinstance(message, Release):
            entry = self._book.open.get(message.reservation_id)
            await super().receive(message)
            self._granted.discard(message.reservation_id)
            self._lapsed.pop(message.reservation_id, None)  # expired: it stays charged
            if entry is None or self._drawn(message.reservation_id, entry.provider) is None:
                self._share_release(message.reservation_id)
            return None
        return await super().receive(message)

    def _reserved(self, reservation: Reservation, outcome: Outcome) -> Reservation:
        result: ReserveResult | None = None if outcome.cancelled else outcome.value
        if result is not None and result.granted:
            if reservation.id in self._book.open:  # not settled or released meanwhile
                self._granted.add(reservation.id)
            return reservation
        self._book.release(reservation.id)
        self._share_release(reservation.id)
        error = outcome.error
        if isinstance(error, ClusterUnavailable):
            raise LedgerUnavailable(
                f"the shared ledger cannot reserve: {error.reason}",
                provider=reservation.provider, model=reservation.model)
        if error is not None:
            raise error
        if result is None:  # cancelled: nobody reads the answer
            return reservation
        refused = result.refused
        limit = refused.limit if refused is not None else "unknown"
        held = f"settled ${usd(refused.settled):.6f} + reserved ${usd(refused.reserved):.6f}" \
            if refused is not None else "unknown"
        raise LLMCostLimitError(
            f"the shared {limit} limit would be passed by the worst case "
            f"${reservation.amount:.6f} of {reservation.model} ({held} across all workers)",
            provider=reservation.provider, model=reservation.model)

    # -- shared settles and releases, behind the answers -------------------------------------

    # A release or settle frees money in Redis; a reserve that reached Redis before it could be
    # refused for money already given back (the router releases an attempt its limiter refused
    # and reserves the fallback at once). RedisLink runs this worker's calls in the order they
    # are written (one pipelined connection), and a free's command is written in the first step
    # of its task: so a reserve waits only until every free piped before it has started, not
    # until it has landed (a round trip each, which serialized back-to-back requests).

    async def _reserve_shared(self, key: str, amount: int, provider: str,
                              day: str) -> ReserveResult:
        while self._unwritten:
            if self._frees_written is None:
                self._frees_written = anyio.Event()
            await self._frees_written.wait()
        return await self._shared.reserve(key, amount, provider, day)

    async def _free(self, free: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        call = free(*args)  # its command is written in the first step of ``call``, just below
        self._unwritten -= 1
        if not self._unwritten and self._frees_written is not None:
            self._frees_written.set()
            self._frees_written = None
        return await call

    def _pipe_free(self, *args: Any, then: Callable[[Outcome], Any]) -> None:
        self._unwritten += 1
        self.context.pipe(self._free, *args, reply_to=None, then=then)

    def _share_release(self, reservation_id: int) -> None:
        self._pipe_free(self._shared.release, self._key(reservation_id), self._book.day,
                        then=_ignore)

    def _share_settle(self, pending: _PendingSettle) -> None:
        self._sharing[pending.key] = pending
        self._pipe_free(self._shared.settle, pending.key, pending.charge, pending.provider,
                        pending.day, then=lambda outcome: self._settled(pending, outcome))

    def _settled(self, pending: _PendingSettle, outcome: Outcome) -> None:
        self._sharing.pop(pending.key, None)
        if outcome.error is None and not outcome.cancelled:
            return
        if isinstance(outcome.error, ClusterUnavailable) or outcome.cancelled:
            self._unshared.append(pending)
            self._arm_retry()
            return
        logger.error("ledger: shared settle of %s failed: %r", pending.key, outcome.error)

    def _arm_retry(self) -> None:
        if self._retrying:
            return
        self._retrying = True
        self.context.pipe(self.context.clock.sleep, _RETRY_INTERVAL, reply_to=None,
                          then=self._retry)

    def _retry(self, outcome: Outcome) -> None:
        self._retrying = False
        if outcome.cancelled:
            return
        pending, self._unshared = self._unshared, []
        for item in pending:
            self._share_settle(item)


    # -- allowances: resized (charges pushed, hold renewed) one call at a time each -------------

    def _resize(self, provider: str, allowance: Allowance, *, idle: bool = False) -> None:
        """Push the charges and resize; ``idle``: give the free part back (nothing is drawn
        until the answer)."""
        if allowance.syncing:
            return  # _resized runs another when charges are waiting
        resize = allowance.start(idle=idle, now=self.context.clock.now())
        self.context.pipe(resize.run, self._shared, allowance.key, provider, self._book.day,
                          reply_to=None,
                          then=lambda outcome: self._resized(provider, allowance, resize, outcome))

    def _resized(self, provider: str, allowance: Allowance, resize: Resize,
                 outcome: Outcome) -> None:
        answered = outcome.error is None and not outcome.cancelled
        after = allowance.finish(resize, answered, outcome.value if answered else None)
        if after is not None:
            self._resize(provider, allowance, idle=after)
        if outcome.error is not None and not isinstance(outcome.error, ClusterUnavailable):
            logger.error("ledger: allowance of %s failed: %r", provider, outcome.error)

    def _tick_allowances(self) -> None:
        """Renew every allowance (its TTL), push its charges; an idle one gives back its free
        part. Drawn reservations the local ledger expired unsettled are charged what they held
        (as the local ledger and Redis charge an expired reservation: it may have been billed)."""
        open_ids = self._book.open
        for provider, allowance in self._allowances.items():
            for rid in [rid for rid in allowance.drawn if rid not in open_ids]:
                amount = allowance.drawn.pop(rid)
                allowance.unshared += amount
                self._lapsed[rid] = amount
            while len(self._lapsed) > _LAPSED_MEMORY:
                del self._lapsed[next(iter(self._lapsed))]
            if allowance.held > 0 or allowance.unshared > 0 or allowance.unsure \
                    or allowance.regrow:
                self._resize(provider, allowance, idle=not (allowance.drew or allowance.regrow))
            allowance.drew = False
            allowance.starved = False

    # -- the journal offered to the shared day, on a timer ----------------------------------------

    def _arm_seed(self) -> None:
        self.context.pipe(self.context.clock.sleep, self._seed_interval, reply_to=None,
                          then=self._seed_tick)

    def _seed_tick(self, outcome: Outcome) -> None:
        if outcome.cancelled:
            return
        self._roll_day()
        day = self._book.day
        self._granted.intersection_update(self._book.open)  # forget the swept ones
        self._tick_allowances()
        if not self._book.read:  # its database is down since the start: nothing to offer yet
            self._arm_seed()
            return
        # The seed is read here, in the actor's loop, so it is one consistent snapshot.
        self.context.pipe(self._shared.seed_day_total, day, self._day_seed(day), reply_to=None,
                          then=self._seeded)

    def _seeded(self, outcome: Outcome) -> None:
        """Redis down or slow: the next tick tries again (a reserve seeds first anyway)."""
        if not outcome.cancelled:
            self._arm_seed()


def _ignore(outcome: Outcome) -> None:
    """A shared release that failed: the reservation expires in Redis by its TTL."""
