"""Review 7: a graceful stop while the ledger's journal is down.

The stop used to return at once when the store was closed (down): the charges and open
reservations waiting to be written were dropped without a word, and the next process's day
lacked them (the daily limit could then be passed by that much). Now the stop tries the database
once more; what it still cannot write is named in an ERROR line (the count and the amount).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from actors.llm._config import CostConfig
from actors.llm._ledger import LedgerActor, LedgerBook
from actors.llm._messages import Reservation, Settle, Usage
from runtime.testing import FakeClock
from tests.llm.test_ledger import CATALOG, DAY, config, ledger_system, reserve
from tests.llm.test_review7_journal_faults import holds, rows, until

pytestmark = pytest.mark.anyio


async def _down_with_a_charge(path: str, actor: LedgerActor, book: LedgerBook,
                              ledger: object, backup: sqlite3.Connection) -> None:
    a: Reservation = await ledger.ask(reserve("a"), timeout=5)  # type: ignore[attr-defined]
    await until(lambda: len(holds(path)) == 1, "the hold written")
    backup.execute("BEGIN EXCLUSIVE")
    await ledger.ask(Settle(a.id, Usage(), 0.001), timeout=5)  # type: ignore[attr-defined]
    await until(lambda: book.down is not None and not actor._writing, "down")


def _ledger(tmp_path: Path) -> tuple[CostConfig, str, LedgerActor]:
    cost = config(tmp_path, daily_cost_limit=0.01)
    assert cost.db_path is not None
    actor = LedgerActor(cost, CATALOG, now=lambda: DAY)
    actor.busy_timeout = 0.2  # a locked write fails in 0.2 s (10 s in production)
    return cost, cost.db_path, actor


async def test_a_stop_while_down_writes_what_it_can_once_the_lock_is_gone(
    tmp_path: Path,
) -> None:
    cost, path, actor = _ledger(tmp_path)
    with closing(sqlite3.connect(path, isolation_level=None)) as backup:
        async with ledger_system(cost, clock=FakeClock(), actor=lambda: actor) as system:
            book: LedgerBook = system.durable("ledger")
            await _down_with_a_charge(path, actor, book, system.ref("ledger"), backup)
            backup.execute("ROLLBACK")  # the backup ends; the ledger has not tried again yet
    assert rows(path, "SELECT cost, request_id FROM charges") == [(0.001, "a")]
    assert rows(path, "SELECT day, total FROM day_totals") == [("2026-11-25", 0.001)]
    assert holds(path) == []


async def test_a_stop_that_still_cannot_write_names_what_it_loses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="actors.llm._ledger")
    cost, path, actor = _ledger(tmp_path)
    with closing(sqlite3.connect(path, isolation_level=None)) as backup:
        async with ledger_system(cost, clock=FakeClock(), actor=lambda: actor) as system:
            book: LedgerBook = system.durable("ledger")
            await _down_with_a_charge(path, actor, book, system.ref("ledger"), backup)
        backup.execute("ROLLBACK")
    assert [r.getMessage() for r in caplog.records if "not written" in r.getMessage()] == [
        f"ledger: stopping with database {path!r} unusable (database is locked): 1 charges"
        " ($0.001000) and 0 open reservations were not written; the next process's day lacks"
        " them"
    ]
    assert rows(path, "SELECT cost FROM charges") == []
