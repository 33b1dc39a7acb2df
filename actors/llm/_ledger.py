"""The LedgerActor: the one authority on money.

Every attempt reserves its worst case before the call (``Reserve``: prompt tokens at the input
price plus ``max_tokens`` at the output price) and settles to the actual cost after it (``Settle``)
or releases the reservation (``Release``). The ledger refuses a reservation with
:class:`LLMCostLimitError` when it would pass ``max_cost_per_request`` or when settled-today plus
every open reservation plus this one would pass ``daily_cost_limit``. Because a reservation is the
worst case and the refusal check counts open reservations, spend stays under the daily limit however
many requests run at once (invariant 2), provided an attempt never costs more than it reserved.

Decisions, and why:

- **Money is counted in integer nano-USD.** Reservations are rounded up, charges to the nearest
  nano-USD; running totals never drift, so the check at the limit is exact after millions of
  reserves and releases.
- **A model without a price cannot be reserved under a limit.** Its worst case is unknown, so
  granting it would break invariant 2: with ``max_cost_per_request`` or ``daily_cost_limit`` set,
  ``Reserve`` refuses (configure the provider's ``prices``). Without limits it reserves 0 and a
  settle without a reported cost charges 0; both are logged and counted (``LedgerBook.unpriced``).
- **An attempt that costs more than it reserved is still charged** (the money is spent) and
  counted as an overage (``LedgerBook.overages``), with a warning. It can only happen when the
  provider reports a cost above our price table or the router's prompt estimate was short; the
  daily limit then holds for every later reservation (they see the higher settled total), but the
  overage itself may carry the day past the limit by at most its own size.
- **Open reservations are durable state** (:class:`LedgerBook`, kept by the cell across restarts).
  A crashed ledger therefore keeps counting the money its callers may still spend, and their later
  ``Settle`` finds the reservation. The settled total is reloaded on every start from SQLite plus
  the charges not yet written: the database is the truth, so a new process continues the day.
  Reservations of a process that died die with its calls; they are not persisted.
- **A settle counts at once and is written behind, in batches, off the loop.** The charge moves
  from reserved to settled in the actor's loop (single writer) and joins ``LedgerBook.unwritten``;
  one worker-thread write at a time drains that list (``anyio.to_thread.run_sync`` through
  ``pipe``, shielded so that a batch handed to the thread is never half-known). Measured on this
  machine, 500 concurrent settles: 12,300/s and ~72 µs of event-loop CPU per settle, against
  8,400/s and ~106 µs writing inline (a commit is ~40 µs mean, a few ms at a WAL checkpoint).
  A failed write (``sqlite3.Error``) crashes the instance, the only error that does; the unwritten
  charges stay in the book, still counted, and the next instance writes them. A graceful stop
  writes what is left before closing the database.
- **Lost settles cannot block the budget.** Reservations older than ``reservation_ttl`` are swept
  on a timer (the cell's clock). A late ``Settle`` of a swept reservation is still charged (the
  money was spent); like an overage it is outside invariant 2, which is why the TTL (10 min by
  default) is far longer than any request's deadline.
- **Days** are ``day_key(now(), config.day_timezone)``; a charge belongs to the day it is settled
  on, and open reservations carry into the new day (they will be settled there).
- ``track_costs: false`` keeps the accounting and the limits in memory only (no database).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread

from actors.metrics import CostWarning
from runtime import Actor, ActorRef, ChildSpec, Outcome

from ._catalog import ModelCatalog
from ._config import CostConfig
from ._errors import LLMCostLimitError
from ._ledger_store import LedgerStore, day_key
from ._messages import (
    GetSpend,
    Release,
    Reservation,
    Reserve,
    Settle,
    SpendSnapshot,
)

__all__ = ["LedgerActor", "LedgerBook", "ledger_child_spec"]

logger = logging.getLogger(__name__)

_NANO = 1_000_000_000
#: Swept reservations remembered so that a late settle is still charged.
_SWEPT_MEMORY = 10_000


def _nanos_up(usd: float) -> int:
    return math.ceil(usd * _NANO)


def _nanos(usd: float) -> int:
    return round(usd * _NANO)


def _usd(nanos: int) -> float:
    return nanos / _NANO


@dataclass(frozen=True, slots=True)
class _Charge:
    day: str
    cost: float  # USD, as persisted
    provider: str
    model: str
    request_id: str


@dataclass(frozen=True, slots=True)
class _Open:
    request_id: str
    provider: str
    model: str
    amount: int  # nano-USD
    created: float  # on the cell's clock


@dataclass
class LedgerBook:
    """The ledger's state that outlives an instance: open reservations and today's totals.

    Read it (``system.durable("ledger")``) for health and tests; only the ledger writes it.
    Amounts are nano-USD; the ``*_usd`` properties convert.
    """

    day: str = ""
    settled: int = 0
    reserved: int = 0
    open: dict[int, _Open] = field(default_factory=dict)
    swept: dict[int, _Open] = field(default_factory=dict)
    unwritten: list[_Charge] = field(default_factory=list)
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
    """Reservations swept after their TTL."""

    @property
    def settled_usd(self) -> float:
        return _usd(self.settled)

    @property
    def reserved_usd(self) -> float:
        return _usd(self.reserved)

    @property
    def peak_usd(self) -> float:
        return _usd(self.peak)

    def __repr__(self) -> str:
        return (
            f"<LedgerBook {self.day or '-'} [settled ${self.settled_usd:.6f} | reserved "
            f"${self.reserved_usd:.6f} in {len(self.open)} | peak ${self.peak_usd:.6f}]>"
        )


class LedgerActor(Actor):
    """Reserves, settles and releases the cost of LLM calls against the configured limits.

    Messages: ``Reserve`` → :class:`Reservation` (raises :class:`LLMCostLimitError`),
    ``Settle`` → the USD charged, counted at once and persisted shortly after (``None`` for an
    unknown or already ended reservation),
    ``Release`` → ``None`` (idempotent), ``GetSpend`` → :class:`SpendSnapshot`.
    ``metrics`` receives a :class:`CostWarning` once a day when settled spend crosses
    ``cost_warning_threshold`` of the daily limit. ``now`` gives the wall-clock time that decides
    the day (default: the current UTC time).
    """

    def __init__(
        self,
        config: CostConfig,
        catalog: ModelCatalog,
        *,
        metrics: ActorRef | None = None,
        now: Callable[[], datetime] | None = None,
        reservation_ttl: float = 600.0,
        sweep_interval: float = 30.0,
    ) -> None:
        if reservation_ttl <= 0 or sweep_interval <= 0:
            raise ValueError("reservation_ttl and sweep_interval must be positive")
        self._config = config
        self._catalog = catalog
        self._metrics = metrics
        self._now = now or _utc_now
        self._ttl = reservation_ttl
        self._sweep_interval = sweep_interval
        self._store: LedgerStore | None = None
        self._writing = False
        self._book = LedgerBook()
        self._daily_limit = (
            None if config.daily_cost_limit is None else _nanos(config.daily_cost_limit)
        )

    async def on_start(self) -> None:
        durable = self.context.durable
        if isinstance(durable, LedgerBook):
            self._book = durable
        if self._config.track_costs:
            self._store = LedgerStore(self._config.db_path)
        day = self._today()
        self._book.day = day
        self._book.settled = self._load(day)
        self._book.peak = max(self._book.peak, self._book.settled + self._book.reserved)
        self._arm_sweep()
        self._write_charges()  # what a crashed instance could not write

    async def on_stop(self) -> None:
        # Any write in flight has finished (it is shielded); a graceful stop persists the rest.
        if self._store is None:
            return
        try:
            written, error = _write_batch(self._store, list(self._book.unwritten))
            del self._book.unwritten[:written]
            if error is not None:
                raise error
        finally:
            self._store.close()
            self._store = None

    async def receive(self, message: Any) -> Any:
        self._roll_day()
        if isinstance(message, Reserve):
            return self._reserve(message)
        if isinstance(message, Settle):
            return self._settle(message)
        if isinstance(message, Release):
            self._release(message.reservation_id)
            return None
        if isinstance(message, GetSpend):
            return self._snapshot()
        raise TypeError(f"LedgerActor does not handle {type(message).__name__}")

    # -- messages -------------------------------------------------------------------------------

    def _reserve(self, message: Reserve) -> Reservation:
        if message.prompt_tokens < 0 or message.max_tokens < 0:
            raise ValueError(f"token counts must not be negative: {message!r}")
        book = self._book
        config = self._config
        limited = config.max_cost_per_request is not None or self._daily_limit is not None
        worst = self._catalog.cost_of(message.model, message.prompt_tokens, message.max_tokens)
        if worst is None:
            if limited:
                raise LLMCostLimitError(
                    f"no price is known for model {message.model!r}, so its cost cannot be "
                    "bounded under the configured cost limits; add it to the provider's prices",
                    provider=message.provider,
                    model=message.model,
                )
            book.unpriced += 1
            logger.warning("ledger: reserving 0 for unpriced model %r (no cost limits are set)",
                           message.model)
            worst = 0.0
        if config.max_cost_per_request is not None and worst > config.max_cost_per_request:
            raise LLMCostLimitError(
                f"worst-case cost ${worst:.6f} of {message.model} ({message.prompt_tokens} "
                f"prompt + {message.max_tokens} max tokens) exceeds max_cost_per_request "
                f"${config.max_cost_per_request:.6f}",
                provider=message.provider,
                model=message.model,
            )
        amount = _nanos_up(worst)
        if self._daily_limit is not None:
            total = book.settled + book.reserved + amount
            if total > self._daily_limit:
                raise LLMCostLimitError(
                    f"daily_cost_limit ${_usd(self._daily_limit):.6f} would be passed on "
                    f"{book.day}: settled ${_usd(book.settled):.6f} + reserved "
                    f"${_usd(book.reserved):.6f} + worst case ${_usd(amount):.6f} of "
                    f"{message.model} = ${_usd(total):.6f}",
                    provider=message.provider,
                    model=message.model,
                )
        reservation_id = book.next_id
        book.next_id += 1
        book.open[reservation_id] = _Open(
            message.request_id, message.provider, message.model, amount,
            self.context.clock.now(),
        )
        book.reserved += amount
        book.peak = max(book.peak, book.settled + book.reserved)
        return Reservation(reservation_id, message.request_id, message.provider, message.model,
                           _usd(amount))

    def _settle(self, message: Settle) -> float | None:
        book = self._book
        late = message.reservation_id not in book.open
        entry = (book.swept if late else book.open).get(message.reservation_id)
        if entry is None:
            logger.debug("ledger: settle of unknown reservation %s ignored", message.reservation_id)
            return None
        charge = max(0, _nanos(self._actual_cost(entry, message)))  # negative usage is garbage
        if self._store is not None:
            book.unwritten.append(
                _Charge(book.day, _usd(charge), entry.provider, entry.model, entry.request_id)
            )
            self._write_charges()
        if late:
            del book.swept[message.reservation_id]
            logger.warning("ledger: late settle of expired reservation %s (%s): charged $%.6f",
                           message.reservation_id, entry.request_id, _usd(charge))
        else:
            del book.open[message.reservation_id]
            book.reserved -= entry.amount
        if charge > entry.amount:
            book.overages += 1
            logger.warning(
                "ledger: %s on %s cost $%.6f, more than its reservation of $%.6f",
                entry.request_id, entry.model, _usd(charge), _usd(entry.amount),
            )
        book.settled += charge
        book.peak = max(book.peak, book.settled + book.reserved)
        self._check_warning()
        return _usd(charge)

    def _actual_cost(self, entry: _Open, message: Settle) -> float:
        reported = message.cost
        if reported is not None and math.isfinite(reported) and reported >= 0:
            return reported
        usage = message.usage
        priced = self._catalog.cost_of(entry.model, usage.prompt_tokens, usage.completion_tokens,
                                       usage.cached_tokens)
        if priced is not None:
            return priced
        self._book.unpriced += 1
        logger.warning("ledger: no price for %r and no reported cost: %s charged 0",
                       entry.model, entry.request_id)
        return 0.0

    def _release(self, reservation_id: int) -> None:
        book = self._book
        entry = book.open.pop(reservation_id, None)
        if entry is not None:
            book.reserved -= entry.amount
        else:
            book.swept.pop(reservation_id, None)

    def _snapshot(self) -> SpendSnapshot:
        book = self._book
        return SpendSnapshot(
            day=book.day,
            settled=_usd(book.settled),
            reserved=_usd(book.reserved),
            open_reservations=len(book.open),
            daily_limit=self._config.daily_cost_limit,
            per_request_limit=self._config.max_cost_per_request,
        )

    # -- days, warnings, expiry -----------------------------------------------------------------

    def _today(self) -> str:
        return day_key(self._now(), self._config.day_timezone)

    def _load(self, day: str) -> int:
        if self._store is None:
            return 0
        unwritten = sum(_nanos(c.cost) for c in self._book.unwritten if c.day == day)
        return _nanos(self._store.day_total(day)) + unwritten

    # -- persistence ----------------------------------------------------------------------------

    def _write_charges(self) -> None:
        """Start writing the unwritten charges in a worker thread, unless a write is running."""
        if self._writing or self._store is None or not self._book.unwritten:
            return
        self._writing = True
        # The write serves every settle so far, not the message being handled: it must neither
        # answer that request nor be cancelled when its caller gives up.
        current, self.context.request = self.context.request, None
        try:
            self.context.pipe(self._write, self._store, list(self._book.unwritten),
                              then=self._written)
        finally:
            self.context.request = current

    async def _write(self, store: LedgerStore, batch: list[_Charge]) -> None:
        # Shielded: once handed to the thread, a batch is written even if the instance is ending,
        # and the written prefix is removed here, right after the thread returns (no await in
        # between), so nothing is written twice by on_stop or the next instance.
        with anyio.CancelScope(shield=True):
            written, error = await anyio.to_thread.run_sync(_write_batch, store, batch)
        del self._book.unwritten[:written]
        if error is not None:
            raise error

    def _written(self, outcome: Outcome) -> None:
        self._writing = False
        if outcome.error is not None:
            raise outcome.error  # sqlite3.Error: crash; the charges stay in the book
        self._write_charges()

    def _roll_day(self) -> None:
        day = self._today()
        book = self._book
        if day == book.day:
            return
        logger.info("ledger: day %s ends with $%.6f settled; %d reservations carry over",
                    book.day, _usd(book.settled), len(book.open))
        book.day = day
        book.settled = self._load(day)
        book.peak = book.settled + book.reserved

    def _check_warning(self) -> None:
        book = self._book
        if self._daily_limit is None or book.warned_day == book.day:
            return
        if book.settled < self._config.cost_warning_threshold * self._daily_limit:
            return
        book.warned_day = book.day
        spent, limit = _usd(book.settled), _usd(self._daily_limit)
        logger.warning("ledger: spend on %s reached $%.6f, %.0f%% of the daily limit $%.6f",
                       book.day, spent, 100 * spent / limit, limit)
        if self._metrics is not None:
            self._metrics.try_tell(CostWarning(book.day, spent, limit))

    def _arm_sweep(self) -> None:
        self.context.pipe(self.context.clock.sleep, self._sweep_interval, then=self._sweep)

    def _sweep(self, outcome: Outcome) -> None:
        if outcome.cancelled:
            return
        self._arm_sweep()
        book = self._book
        now = self.context.clock.now()
        stale = [rid for rid, entry in book.open.items() if now - entry.created >= self._ttl]
        for rid in stale:
            entry = book.open.pop(rid)
            book.reserved -= entry.amount
            book.expired += 1
            book.swept[rid] = entry
            logger.warning("ledger: reservation %s of %s expired after %.0f s unsettled",
                           rid, entry.request_id, self._ttl)
        while len(book.swept) > _SWEPT_MEMORY:
            del book.swept[next(iter(book.swept))]

    def __repr__(self) -> str:
        return f"<LedgerActor {self._book!r}>"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _write_batch(
    store: LedgerStore, batch: list[_Charge]
) -> tuple[int, sqlite3.Error | None]:
    """Write ``batch`` in order; return how many were written and the error that stopped it."""
    for i, charge in enumerate(batch):
        try:
            store.add_charge(charge.day, charge.cost, charge.provider, charge.model,
                             charge.request_id)
        except sqlite3.Error as exc:
            return i, exc
    return len(batch), None


def ledger_child_spec(
    config: CostConfig,
    catalog: ModelCatalog,
    *,
    metrics: ActorRef | None = None,
    now: Callable[[], datetime] | None = None,
    reservation_ttl: float = 600.0,
    sweep_interval: float = 30.0,
    mailbox_size: int = 10_000,
) -> ChildSpec:
    """The ``"ledger"`` child: a :class:`LedgerActor` with a durable :class:`LedgerBook`.

    Only ``sqlite3.Error`` crashes it; a cost-limit refusal is an answer.
    """
    return ChildSpec(
        name="ledger",
        factory=lambda: LedgerActor(
            config, catalog, metrics=metrics, now=now,
            reservation_ttl=reservation_ttl, sweep_interval=sweep_interval,
        ),
        crash_on=(sqlite3.Error,),
        mailbox_size=mailbox_size,
        durable=LedgerBook,
    )
