"""``runtime.sqlite.write_transaction``, which the history store and the ledger's journal share:
a failed COMMIT, or a statement after which SQLite rolled the transaction back itself (a full
database), ends the transaction and raises its own error.

Before it was shared, the ledger's journal kept its own copies: a failed COMMIT left the
transaction open (every later write then failed with "cannot start a transaction within a
transaction"), and a full database raised "cannot rollback - no transaction is active" instead
of its own error. Real SQLite files; the COMMIT is denied with SQLite's authorizer, the database
made full with ``PRAGMA max_page_count``.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from actors.llm._ledger_store import LedgerStore
from runtime.sqlite import open_sqlite, write_transaction

_SCHEMA = "CREATE TABLE IF NOT EXISTS t (v TEXT NOT NULL);"


def _deny_commit_once(db: sqlite3.Connection) -> None:
    denied: list[bool] = []

    def authorize(action: int, arg1: Any, *_: Any) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and not denied:
            denied.append(True)
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    db.set_authorizer(authorize)


def test_a_failed_commit_is_rolled_back_and_the_next_write_works(tmp_path: Path) -> None:
    with closing(open_sqlite(tmp_path / "db.sqlite3", _SCHEMA)) as db:
        _deny_commit_once(db)
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"), \
                write_transaction(db):
            db.execute("INSERT INTO t VALUES ('lost')")
        assert not db.in_transaction
        with write_transaction(db):
            db.execute("INSERT INTO t VALUES ('kept')")
        assert db.execute("SELECT v FROM t").fetchall() == [("kept",)]


def test_a_full_database_raises_its_own_error(tmp_path: Path) -> None:
    with closing(open_sqlite(tmp_path / "db.sqlite3", _SCHEMA)) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"), \
                write_transaction(db):
            db.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
        assert not db.in_transaction


def test_the_ledgers_journal_writes_again_after_a_failed_commit(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "ledger.sqlite3") as store:
        assert store._conn is not None
        _deny_commit_once(store._conn)
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            store.add_charges([("2026-11-25", 0.001, "p", "m", "lost")])
        store.add_charges([("2026-11-25", 0.002, "p", "m", "kept")])
        assert store.day_total("2026-11-25") == 0.002
