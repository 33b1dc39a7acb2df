"""The ledger's bookkeeping: open reservations and settled totals against the budgets.

:class:`LedgerBook` is the state that outlives a ledger instance (the cell keeps it across
restarts) and the one implementation of :class:`Bookkeeping`, the small interface the
:class:`~actors.llm._ledger.LedgerActor` drives: ``reserve`` (all budgets checked and the amount
held in one step), ``settle``, ``release`` and the day totals. A shared backend (Redis, for several
processes) implements the same four operations with the same refusals.

Budgets, all checked as *settled + reserved + this worst case*: the global day, each provider's
own day, a turn (a conversation turn's ``max_cost_per_turn``) and a request
(``max_cost_per_request`` over all of its attempts: a fallback after an attempt that was billed,
a hedge beside the attempt in flight). Money is counted in integer
nano-USD: reservations rounded up, charges to the nearest; running totals never drift, so the check
at the limit is exact after millions of reserves and releases. One charge is at most
:data:`MAX_CHARGE` (see :func:`charge_nanos`).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from typing import Protocol

from ._errors import LLMCostLimitError
from ._ledger_store import LedgerStore

__all__ = [
    "MAX_CHARGE",
    "Bookkeeping",
    "Budget",
    "Charge",
    "LedgerBook",
    "OpenReservation",
    "charge_nanos",
    "nanos",
    "nanos_up",
    "usd",
    "write_batch",
]

_NANO = 1_000_000_000
#: Swept reservations remembered so that a late settle is still charged.
_SWEPT_MEMORY = 10_000
#: Relative error of a cost computed in a few float operations (each off by at most 2**-53).
_FLOAT_ERROR = 1e-12


def nanos_up(amount: float) -> int:
    """``amount`` USD in nano-USD, rounded up (reservations never round in the caller's favour).

    An amount within the float's own error of a whole nano-USD is that nano-USD: a price-table
    cost computed in floats is off by a few units in the last place (HELLO's $0.00001935 is
    1.9350000000000003e-05), and rounding that up reserved 1 nano-USD too many, so 40 requests of
    exactly 1/40 of the day's limit did not fit.
    """
    exact = amount * _NANO
    nearest = round(exact)
    if abs(exact - nearest) <= abs(exact) * _FLOAT_ERROR:
        return nearest
    return math.ceil(exact)


def nanos(amount: float) -> int:
    """``amount`` USD in nano-USD, rounded to the nearest."""
    return round(amount * _NANO)


MAX_CHARGE = 1_000_000 * _NANO
"""The most one settle charges, nano-USD ($1M: no model call costs that much)."""


def charge_nanos(amount: float) -> int:
    """The charge for a cost of ``amount`` USD, in nano-USD: to the nearest, at least 0 (NaN is
    0) and at most :data:`MAX_CHARGE`.

    Why a cap: a reported cost is believed (the money is spent), but one of $1e300 is garbage
    that would overflow the conversion and crash the settle. Charging the cap still closes every
    smaller daily limit, and keeps the totals exact in 64-bit integers (as Redis keeps them).
    """
    if not amount > 0:
        return 0
    if amount >= MAX_CHARGE / _NANO:
        return MAX_CHARGE
    return nanos(amount)


def usd(amount: int) -> float:
    """``amount`` nano-USD in USD."""
    return amount / _NANO


@dataclass(frozen=True, slots=True)
class Budget:
    """What one reservation is checked against (nano-USD limits; ``None``: no limit)."""

    daily: int | None = None
    provider_daily: int | None = None
    turn: int | None = None
    request: int | None = None

    @classmethod
    def of(cls, daily: float | None, provider_daily: float | None,
           turn: float | None, request: float | None = None) -> Budget:
        """The budget of these USD limits."""
        return cls(*(None if limit is None else nanos(limit)
                     for limit in (daily, provider_daily, turn, request)))


@dataclass(frozen=True, slots=True)
class Charge:
    """A settled charge, as persisted."""

    day: str
    cost: float  # USD
    provider: str
    model: str
    request_id: str


@dataclass(frozen=True, slots=True)
class OpenReservation:
    """Money held for one attempt until it is settled or released."""

    request_id: str
    provider: str
    model: str
    amount: int  # nano-USD
    created: float  # on the ledger's clock
    turn_id: str | None = None


@dataclass(slots=True)
class HeldSpend:
    """Settled and reserved money of one conversation turn, or of one request's attempts."""

    settled: int = 0
    reserved: int = 0
    touched: float = 0.0


class Bookkeeping(Protocol):
    """Reservations and totals: what a ledger backend must provide."""

    def reserve(self, entry: OpenReservation, budget: Budget) -> int:
        """Hold ``entry.amount`` if every budget allows it; return the reservation id.

        Raises :class:`LLMCostLimitError` naming the budget that would be passed.
        """
        ...

    def settle(self, reservation_id: int, charge: int, now: float) -> OpenReservation | None:
        """Move a reservation to settled at ``charge``; ``None`` if unknown or already ended."""
        ...

    def release(self, reservation_id: int) -> None:
        """Drop a reservation without charging it. Idempotent."""
        ...

    def day_total(self) -> int:
        """Settled today, nano-USD."""
        ...


@dataclass
class LedgerBook:
    """The ledger's state that outlives an instance: open reservations and today's totals.

    Read it (``system.durable("ledger")``) for health and tests; only the ledger writes it.
    Amounts are nano-USD; the ``*_usd`` properties convert.
    """

    day: str = ""
    settled: int = 0
    reserved: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)
    """Settled today per provider."""
    reserved_by_provider: dict[str, int] = field(default_factory=dict)
    turns: dict[str, HeldSpend] = field(default_factory=dict)
    requests: dict[str, HeldSpend] = field(default_factory=dict)
    """Per request id, while it holds money or has just settled (forgotten once idle)."""
    open: dict[int, OpenReservation] = field(default_factory=dict)
    swept: dict[int, OpenReservation] = field(default_factory=dict)
    unwritten: list[Charge] = field(default_factory=list)
    """Settled charges not yet in the database (counted in ``settled`` already)."""
    next_id: int = 1
    peak: int = 0
    """The highest settled + reserved seen today."""
    warned_day: str = ""
    overages: int = 0
    """Settles that cost more than their reservation."""
    unpriced: int = 0
    """Reservations and settles of a model without a price (only possible without limits)."""
    expired: int = 0
    """Reservations swept after their TTL (each charged what it held)."""
    expired_charged: int = 0
    """What the expired reservations were charged, nano-USD (since the process started)."""
    down: str | None = None
    """Why the database cannot be used (reservations are refused meanwhile); ``None`` when up."""
    read: bool = False
    """Whether the database's day (with the last process's leftover holds charged) was read into
    the book: a new process's book counts nothing of the file until then, so it is no journal
    to offer the shared day (see ``SharedLedgerActor``)."""
    holds_journaled: bool = False
    """Whether open reservations are remembered in the database (charged at the next process's
    start if never settled): ``holds`` is kept then."""
    holds: dict[int, OpenReservation | None] = field(default_factory=dict)
    """Open reservations not yet remembered in the database (an entry), and remembered ones
    that ended since (``None``: to forget). One that ends before it is written is never
    written: most settle within a batch."""

    @property
    def settled_usd(self) -> float:
        return usd(self.settled)

    @property
    def reserved_usd(self) -> float:
        return usd(self.reserved)

    @property
    def peak_usd(self) -> float:
        return usd(self.peak)

    @property
    def expired_charged_usd(self) -> float:
        return usd(self.expired_charged)

    # -- Bookkeeping ----------------------------------------------------------------------------

    def reserve(self, entry: OpenReservation, budget: Budget) -> int:
        amount = entry.amount
        where = f"{entry.provider}:{entry.model}"
        if budget.daily is not None and self.settled + self.reserved + amount > budget.daily:
            total = self.settled + self.reserved + amount
            raise LLMCostLimitError(
                f"daily_cost_limit ${usd(budget.daily):.6f} would be passed on {self.day}: "
                f"settled ${usd(self.settled):.6f} + reserved ${usd(self.reserved):.6f} + worst "
                f"case ${usd(amount):.6f} of {entry.model} = ${usd(total):.6f}",
                provider=entry.provider, model=entry.model)
        if budget.provider_daily is not None:
            settled = self.by_provider.get(entry.provider, 0)
            reserved = self.reserved_by_provider.get(entry.provider, 0)
            if settled + reserved + amount > budget.provider_daily:
                raise LLMCostLimitError(
                    f"{entry.provider}'s daily_cost_limit ${usd(budget.provider_daily):.6f} would "
                    f"be passed on {self.day}: settled ${usd(settled):.6f} + reserved "
                    f"${usd(reserved):.6f} + worst case ${usd(amount):.6f} of {where}",
                    provider=entry.provider, model=entry.model)
        if entry.turn_id is not None and budget.turn is not None:
            _check_share(self.turns.get(entry.turn_id), amount, budget.turn,
                         "max_cost_per_turn", "turn", where, entry)
        if budget.request is not None:
            _check_share(self.requests.get(entry.request_id), amount, budget.request,
                         "max_cost_per_request", "request", where, entry)
        reservation_id = self.next_id
        self.next_id += 1
        self.open[reservation_id] = entry
        self._hold(entry, amount)
        if self.holds_journaled:
            self.holds[reservation_id] = entry
        return reservation_id

    def settle(self, reservation_id: int, charge: int, now: float) -> OpenReservation | None:
        entry = self.open.pop(reservation_id, None)
        if entry is not None:
            self._hold(entry, -entry.amount)
            self._unhold(reservation_id)
        else:
            entry = self.swept.pop(reservation_id, None)
            if entry is None:
                return None
        self._charge(entry, charge, now)
        return entry

    def _charge(self, entry: OpenReservation, charge: int, now: float) -> None:
        self.settled += charge
        self.by_provider[entry.provider] = self.by_provider.get(entry.provider, 0) + charge
        if entry.turn_id is not None:
            turn = self.turns.setdefault(entry.turn_id, HeldSpend())
            turn.settled += charge
            turn.touched = now
        spent = self.requests.setdefault(entry.request_id, HeldSpend())
        spent.settled += charge
        spent.touched = now
        self.peak = max(self.peak, self.settled + self.reserved)

    def release(self, reservation_id: int, now: float | None = None) -> None:
        entry = self.open.pop(reservation_id, None)
        if entry is not None:
            self._hold(entry, -entry.amount, now)
            self._unhold(reservation_id)
        else:
            self.swept.pop(reservation_id, None)

    def day_total(self) -> int:
        return self.settled

    # -- housekeeping ---------------------------------------------------------------------------

    def expire(self, reservation_id: int, now: float) -> OpenReservation:
        """Charge an open reservation what it held (its settle never came: the upstream may have
        billed its worst case); a late settle still finds it in ``swept``, already charged
        ``entry.amount``."""
        entry = self.open.pop(reservation_id)
        self._hold(entry, -entry.amount)
        self._unhold(reservation_id)
        self._charge(entry, entry.amount, now)
        self.swept[reservation_id] = entry
        self.expired += 1
        self.expired_charged += entry.amount
        return entry

    def _unhold(self, reservation_id: int) -> None:
        if not self.holds_journaled:
            return
        if self.holds.pop(reservation_id, None) is None:  # written already (or being written)
            self.holds[reservation_id] = None

    def holds_unwritten(self, ops: dict[int, OpenReservation | None]) -> None:
        """Take back ``ops`` (taken from ``holds``) that a failed write did not store."""
        for reservation_id, op in ops.items():
            if reservation_id not in self.holds:
                self.holds[reservation_id] = op
            elif op is not None and self.holds[reservation_id] is None:
                del self.holds[reservation_id]  # never stored, and ended since

    def new_day(self, day: str, settled: int, by_provider: dict[str, int]) -> None:
        """Start ``day`` from its persisted totals; open reservations carry over."""
        self.day = day
        self.settled = settled
        self.by_provider = dict(by_provider)
        self.peak = settled + self.reserved

    def sweep(self, now: float, ttl: float,
              request_idle: float = 0.0) -> list[tuple[int, OpenReservation]]:
        """Expire (charge) the reservations older than ``ttl`` (returned), forget idle turns, and
        requests holding nothing for ``request_idle`` seconds (a request's next attempt reserves
        as soon as the last one ends; one entry per request kept for the TTL would be ~200 bytes
        each x every request of 10 minutes)."""
        stale = [rid for rid, entry in self.open.items() if now - entry.created >= ttl]
        expired = [(rid, self.expire(rid, now)) for rid in stale]
        while len(self.swept) > _SWEPT_MEMORY:
            del self.swept[next(iter(self.swept))]
        idle = [turn_id for turn_id, turn in self.turns.items()
                if turn.reserved == 0 and turn.touched < now - ttl]
        for turn_id in idle:
            del self.turns[turn_id]
        done = [request_id for request_id, spent in self.requests.items()
                if spent.reserved == 0 and spent.touched < now - request_idle]
        for request_id in done:
            del self.requests[request_id]
        return expired

    def _hold(self, entry: OpenReservation, amount: int, now: float | None = None) -> None:
        # A turn or request is idle from its last hold, release (``now``) or settle: counted from
        # when a long attempt's reservation was made, a sweep right after its release would forget
        # what the turn or request had already settled.
        touched = entry.created if now is None else now
        self.reserved += amount
        provider = entry.provider
        self.reserved_by_provider[provider] = self.reserved_by_provider.get(provider, 0) + amount
        if entry.turn_id is not None:
            turn = self.turns.setdefault(entry.turn_id, HeldSpend())
            turn.reserved += amount
            turn.touched = max(turn.touched, touched)
        spent = self.requests.setdefault(entry.request_id, HeldSpend())
        spent.reserved += amount
        spent.touched = max(spent.touched, touched)
        self.peak = max(self.peak, self.settled + self.reserved)

    def __repr__(self) -> str:
        state = f" | down: {self.down}" if self.down else ""
        return (
            f"<LedgerBook {self.day or '-'} [settled ${self.settled_usd:.6f} | reserved "
            f"${self.reserved_usd:.6f} in {len(self.open)} | peak ${self.peak_usd:.6f}{state}]>"
        )


def write_batch(store: LedgerStore, batch: list[Charge],
                holds: dict[int, OpenReservation | None] | None = None,
                ) -> tuple[int, sqlite3.Error | None]:
    """Write ``batch`` and the ``holds`` changes (see :attr:`LedgerBook.holds`) in one
    transaction; return how many charges were written (all or none) and the error that stopped
    it. One commit per batch, not per charge: a commit costs ~60 us of CPU here, the rows a few
    each."""
    ops = holds or {}
    try:
        store.add_charges(
            [(c.day, c.cost, c.provider, c.model, c.request_id) for c in batch],
            holds=[(rid, e.provider, e.model, usd(e.amount), e.request_id)
                   for rid, e in ops.items() if e is not None],
            released=[rid for rid, e in ops.items() if e is None])
    except sqlite3.Error as exc:
        return 0, exc
    return len(batch), None


def _check_share(spent: HeldSpend | None, amount: int, limit: int, setting: str, whose: str,
                 where: str, entry: OpenReservation) -> None:
    """Refuse ``amount`` more for a turn or a request that ``spent`` so far past ``limit``."""
    settled, reserved = (spent.settled, spent.reserved) if spent is not None else (0, 0)
    if settled + reserved + amount > limit:
        raise LLMCostLimitError(
            f"{setting} ${usd(limit):.6f} would be passed: this {whose} settled "
            f"${usd(settled):.6f} + reserved ${usd(reserved):.6f} + worst case "
            f"${usd(amount):.6f} of {where}", provider=entry.provider, model=entry.model)
