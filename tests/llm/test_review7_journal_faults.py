"""Review 7: the ledger's journal when SQLite fails it: the database locked past the busy timeout
by another connection (a backup holding ``BEGIN EXCLUSIVE``: SQLITE_BUSY), with charges and
open reservations (table ``holds``) waiting to be written.

The real LedgerActor on a real SQLite file, in a real actor system on a fake clock (the reopen
interval); the backup is a second ``sqlite3`` connection. The store's busy timeout is 10 s in
production; the actor's ``busy_timeout`` is cut to 0.2 s here so a failed write takes 0.2 s.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm._ledger import LedgerActor, LedgerBook
from actors.llm._ledger_book import Charge
from actors.llm._ledger_lock import LedgerUnavailable
from actors.llm._messages import Reservation, Settle, SpendSnapshot, Usage
from runtime.testing import FakeClock
from tests.llm.test_ledger import CATALOG, DAY, WORST, config, ledger_system, reserve, spend

pytestmark = pytest.mark.anyio


def rows(path: str, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


def holds(path: str) -> list[tuple[Any, ...]]:
    return rows(path, "SELECT request_id, amount FROM holds ORDER BY id")


async def until(check: Any, what: str) -> None:
    for _ in range(1000):  # 10 s
        if check():
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"not {what} in 10 s")


async def test_a_locked_journal_keeps_its_charges_stays_down_and_recovers_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="actors.llm._ledger")
    clock = FakeClock()
    cost = config(tmp_path, daily_cost_limit=0.01)
    path = cost.db_path
    assert path is not None
    actor = LedgerActor(cost, CATALOG, now=lambda: DAY)
    actor.busy_timeout = 0.2
    async with ledger_system(cost, clock=clock, actor=lambda: actor) as system:
        ledger = system.ref("ledger")
        book: LedgerBook = system.durable("ledger")
        a: Reservation = await ledger.ask(reserve("a"), timeout=5)
        await ledger.ask(reserve("b"), timeout=5)
        await until(lambda: len(holds(path)) == 2, "both holds written")
        with closing(sqlite3.connect(path, isolation_level=None)) as backup:
            backup.execute("BEGIN EXCLUSIVE")
            # Counted at once; its write (the charge, and hold "a" forgotten) fails.
            assert await ledger.ask(Settle(a.id, Usage(), 0.001), timeout=5) == 0.001
            await until(lambda: book.down is not None, "down")
            assert book.down == f"database {path!r} cannot be used: database is locked"
            assert book.unwritten == [Charge("2026-11-25", 0.001, "p", "m", "a")]
            assert await spend(ledger) == SpendSnapshot(
                "2026-11-25", 0.001, WORST, 1, 0.01, None)
            with pytest.raises(LedgerUnavailable):
                await ledger.ask(reserve("refused"), timeout=5)
            # Still locked when the ledger tries again: the charge is still not written, so the
            # journal still fails, and the ledger stays down (before: it said it was usable
            # again at every reopen, took reservations, and failed again 0.2 s later).
            for _ in range(2):
                await clock.advance(5.0)
                await until(lambda: not actor._writing and actor._store is None, "failed again")
                assert book.down == f"database {path!r} cannot be used: database is locked"
            assert book.unwritten == [Charge("2026-11-25", 0.001, "p", "m", "a")]
            assert await spend(ledger) == SpendSnapshot(
                "2026-11-25", 0.001, WORST, 1, 0.01, None)
            backup.execute("ROLLBACK")
        await clock.advance(5.0)
        await until(lambda: book.down is None and not actor._writing, "recovered")
        assert book.unwritten == []
        assert rows(path, "SELECT cost, request_id FROM charges") == [(0.001, "a")]
        assert rows(path, "SELECT day, total FROM day_totals") == [("2026-11-25", 0.001)]
        assert holds(path) == [("b", WORST)]
        assert await spend(ledger) == SpendSnapshot("2026-11-25", 0.001, WORST, 1, 0.01, None)
        await ledger.ask(reserve("c"), timeout=5)  # taken again
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "usable again" in m] == [
        f"ledger: database {path!r} is usable again"]
    assert [m for m in messages if "reservations are refused" in m] == [
        f"ledger: database {path!r} cannot be used: database is locked; reservations are "
        "refused until it can"]
