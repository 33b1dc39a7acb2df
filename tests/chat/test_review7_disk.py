"""Review 7: the history store when the disk fails it: full (SQLITE_FULL), locked past the busy
timeout by another connection (a backup: SQLITE_BUSY), or a COMMIT that fails.

How the faults are made, with real SQLite files: ``PRAGMA max_page_count`` caps a database at
its current size, so the next page an append needs fails with SQLITE_FULL (the pragma acts per
connection, so it is set on the store's own connection, the only one that writes; raising it
again is "space returns"). A second ``sqlite3`` connection holding ``BEGIN EXCLUSIVE`` is the
backup. A COMMIT that fails is made with SQLite's authorizer (``set_authorizer`` denying the
COMMIT once): in WAL mode a COMMIT after ``BEGIN IMMEDIATE`` fails only on I/O (a full disk while
the log is written), which no file here can be made to do; SQLite leaves the transaction open
after some of those failures (SQLITE_BUSY), as after the denied COMMIT.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from actors.chat import HistoryWriteError, TurnComplete
from actors.chat._history import HistoryStore
from tests.chat.test_review7_resume import _copy_database
from tests.chat.test_session import backend, of_type, turn

pytestmark = pytest.mark.anyio

_BIG = "y" * 20_000
"""A message that needs pages the database does not have yet."""


def _cap(store: HistoryStore) -> None:
    """Make the store's database full at its current size."""
    db = store._db
    assert db is not None
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")


def _uncap(store: HistoryStore) -> None:
    assert store._db is not None
    store._db.execute("PRAGMA max_page_count = 1073741823")


def _deny_commit_once(store: HistoryStore) -> None:
    db = store._db
    assert db is not None
    denied: list[bool] = []

    def authorize(action: int, arg1: Any, *_: Any) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and not denied:
            denied.append(True)
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    db.set_authorizer(authorize)


def test_a_failed_commit_is_rolled_back_and_the_next_append_works(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        store.append("c1", [{"role": "user", "content": "one"}])
        _deny_commit_once(store)
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            store.append("c1", [{"role": "user", "content": "lost"}])
        assert store._db is not None and not store._db.in_transaction
        store.append("c1", [{"role": "user", "content": "two"}])
        assert store.load("c1") == [{"role": "user", "content": "one"},
                                    {"role": "user", "content": "two"}]
    with HistoryStore(tmp_path / "h.sqlite3") as again:
        assert [m["content"] for m in again.load("c1")] == ["one", "two"]


def test_a_full_database_fails_the_batch_with_its_own_error_and_writes_again_later(
    tmp_path: Path,
) -> None:
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        store.append("c1", [{"role": "user", "content": "one"}])
        _cap(store)
        with pytest.raises(sqlite3.OperationalError, match=r"^database or disk is full$"):
            store.append_batch([("c1", [{"role": "user", "content": "small"}]),
                                ("c2", [{"role": "user", "content": _BIG}])])
        assert store._db is not None and not store._db.in_transaction
        assert store.load("c1") == [{"role": "user", "content": "one"}]
        assert not store.exists("c2")
        _uncap(store)
        assert store.append_batch([("c2", [{"role": "user", "content": _BIG}])]) == [None]
        assert store.load("c2") == [{"role": "user", "content": _BIG}]


def test_a_database_locked_past_the_busy_timeout_fails_the_append_and_then_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.sqlite3"
    with HistoryStore(path, busy_timeout=0.2) as store:
        store.append("c1", [{"role": "user", "content": "one"}])
        with closing(sqlite3.connect(path, isolation_level=None)) as backup:
            backup.execute("BEGIN EXCLUSIVE")
            with pytest.raises(sqlite3.OperationalError, match=r"^database is locked$"):
                store.append("c1", [{"role": "user", "content": "locked"}])
            backup.execute("ROLLBACK")
        store.append("c1", [{"role": "user", "content": "two"}])
        assert [m["content"] for m in store.load("c1")] == ["one", "two"]


async def test_a_turn_on_a_full_disk_ends_typed_and_the_next_one_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    restarted = tmp_path / "restarted"
    async with backend(tmp_path, servers={}) as b:
        session = await b.session()
        assert of_type(await turn(session, "hello"), TurnComplete)
        before = b.history.load("c1")
        _cap(b.history)
        with pytest.raises(HistoryWriteError, match=r"^the conversation could not be saved;"):
            await turn(session, _BIG, request_id="r2")
        assert b.history.load("c1") == before  # nothing half written, nothing acknowledged
        assert [r.getMessage() for r in caplog.records if "history write" in r.getMessage()] == [
            "conversation c1...: history write failed (OperationalError: database or disk is "
            "full); the turn ends unsaved"]  # the user message, before the model was called
        _uncap(b.history)
        assert of_type(await turn(session, "again", request_id="r3"), TurnComplete)
        assert [m["content"] for m in b.history.load("c1")] == [
            "hello", "Echo: hello", "again", "Echo: again"]
        _copy_database(tmp_path / "history.sqlite3", restarted)
        await turn(session, "third", request_id="r4")
        live = list(b.model.requests[-1].messages)
    async with backend(restarted, servers={}) as b:
        await turn(await b.session(), "third", request_id="r4")
        resumed = list(b.model.requests[-1].messages)
    assert live == resumed
    assert [m["content"] for m in live[1:]] == [
        "hello", "Echo: hello", "again", "Echo: again", "third"]
