"""The ledger's side of SQLite: loading a day, writing settled charges behind, running down.

:class:`LedgerPersistence` is a base of :class:`~actors.llm._ledger.LedgerActor` (see its module
docstring for why a settle is written behind and why an unusable database runs the ledger down);
it works on the actor's own book, store and context, in the actor's task.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import anyio
import anyio.to_thread

from runtime import ActorContext, Outcome

from ._ledger_book import Charge, LedgerBook, OpenReservation, nanos, write_batch
from ._ledger_store import LedgerStore

__all__ = ["LedgerPersistence"]

# The ledger's records keep the ledger's name wherever its methods live.
logger = logging.getLogger("actors.llm._ledger")

#: Seconds between attempts to reopen an unusable database.
_REOPEN_INTERVAL = 5.0


class LedgerPersistence:
    """Loads the day from the database, writes the unwritten charges in a worker thread, and
    runs the ledger down (reopening on its clock) when the database cannot be used."""

    context: ActorContext
    _path: Path | None
    _store: LedgerStore | None
    _writing: bool
    _book: LedgerBook
    _holds_taken: bool
    """Whether the previous process's remembered reservations were charged (or none can be)."""
    busy_timeout: float = 10.0
    """Seconds a write waits for another connection's lock on the database (a backup) before
    it fails with SQLITE_BUSY (and the ledger runs down)."""

    def _load(self, day: str) -> None:
        """Start ``day`` from the database's totals plus the charges not yet written."""
        by_provider: dict[str, int] = {}
        if self._store is not None:
            for provider, total in self._store.provider_totals(day).items():
                by_provider[provider] = nanos(total)
        for charge in self._book.unwritten:
            if charge.day == day:
                by_provider[charge.provider] = by_provider.get(charge.provider, 0) + nanos(
                    charge.cost)
        self._book.new_day(day, sum(by_provider.values()), by_provider)
        self._book.read = True

    def _open_store(self) -> None:
        """Open the database and load the day; on failure run down and retry on the clock."""
        book = self._book
        if self._path is None:
            book.read = True
            return  # in memory only: the durable book is the whole truth
        try:
            self._store = LedgerStore(self._path, busy_timeout=self.busy_timeout)
            if not self._holds_taken:
                self._take_holds(self._store)
            self._load(book.day)
        except (sqlite3.Error, OSError) as exc:
            self._go_down(exc)
            return
        self._book.peak = max(self._book.peak, self._book.settled + self._book.reserved)
        if not (book.unwritten or book.holds):
            self._up()
        # What a crashed instance (or a down spell) could not write. After a down spell the
        # ledger stays down until it is written: the file opens and reads while a backup's lock
        # or a full disk still fails every write.
        self._write_charges()

    def _up(self) -> None:
        """The database can be written again: take reservations again."""
        if self._book.down is not None:
            logger.warning("ledger: database %r is usable again", str(self._path))
        self._book.down = None

    def _take_holds(self, store: LedgerStore) -> None:
        """Charge what the reservations a previous process never settled held (it ended with
        their attempts in flight: the upstream may have billed them), before any new one is
        remembered under the same id."""
        book = self._book
        for provider, model, amount, request_id in store.take_holds(book.day):
            book.expired += 1
            book.expired_charged += nanos(amount)
            logger.warning("ledger: a reservation of %s (%s:%s) was open when the last process "
                           "ended: charged what it held, $%.8f", request_id, provider, model,
                           amount)
        self._holds_taken = True

    def _go_down(self, error: Exception) -> None:
        """Close the database, refuse reservations, and try to reopen it after a while."""
        if self._store is not None:
            self._store.close()
            self._store = None
        reason = f"database {str(self._path)!r} cannot be used: {error}"
        if self._book.down != reason:
            logger.error("ledger: %s; reservations are refused until it can", reason)
        self._book.down = reason
        self.context.pipe(self.context.clock.sleep, _REOPEN_INTERVAL, reply_to=None,
                          then=self._reopen)

    def _reopen(self, outcome: Outcome) -> None:
        if not outcome.cancelled and self._store is None:
            self._open_store()

    def _write_charges(self) -> None:
        """Start writing the unwritten charges in a worker thread, unless a write is running."""
        book = self._book
        if self._writing or self._store is None or not (book.unwritten or book.holds):
            return
        self._writing = True
        holds, book.holds = book.holds, {}
        # The write serves every settle so far, not the message being handled: it must neither
        # answer that request nor be cancelled when its caller gives up.
        self.context.pipe(self._write, self._store, list(book.unwritten), holds, reply_to=None,
                          then=self._written)

    async def _write(self, store: LedgerStore, batch: list[Charge],
                     holds: dict[int, OpenReservation | None]) -> None:
        # Shielded: once handed to the thread, a batch is written even if the instance is ending,
        # and the written prefix is removed here, right after the thread returns (no await in
        # between), so nothing is written twice by on_stop or the next instance.
        with anyio.CancelScope(shield=True):
            written, error = await anyio.to_thread.run_sync(write_batch, store, batch, holds)
        del self._book.unwritten[:written]
        if error is not None:
            self._book.holds_unwritten(holds)
            raise error

    def _written(self, outcome: Outcome) -> None:
        self._writing = False
        if isinstance(outcome.error, sqlite3.Error):
            self._go_down(outcome.error)  # the charges stay in the book, still counted
        elif outcome.error is not None:
            raise outcome.error
        else:
            self._up()
            self._write_charges()
