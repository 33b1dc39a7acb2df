"""Opening a SQLite database the way every store of this project uses it (domain-free).

One connection per store, shared by threads behind the store's own lock
(``check_same_thread=False``); transactions issued by the store (``isolation_level=None``, so
``BEGIN IMMEDIATE`` ... ``COMMIT`` is explicit and nothing stays half-open between calls). WAL
mode lets readers read while one writer writes; ``synchronous=NORMAL`` keeps a commit to one
``write()`` of the log (a power loss may lose the last commits, never corrupts the file); a writer
waits up to ``timeout`` seconds for another connection's lock; foreign keys are enforced.
:func:`write_transaction` is how every store writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WriteLockBusy", "open_sqlite", "write_transaction"]


class WriteLockBusy(Exception):
    """A write that would not wait found the write lock taken (nothing was written)."""


def open_sqlite(path: str | Path, schema: str, *, timeout: float = 10.0) -> sqlite3.Connection:
    """Open (creating it and its parent directories) the database at ``path`` with ``schema``.

    ``schema`` is a script of idempotent statements (``CREATE TABLE IF NOT EXISTS`` ...);
    ``":memory:"`` opens a private in-memory database. The connection is closed again if a pragma
    or the schema fails (``sqlite3.Error`` then propagates).
    """
    name = str(path)
    if name != ":memory:":
        Path(name).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(name, isolation_level=None, check_same_thread=False, timeout=timeout)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection, *,
                      wait: bool = True) -> Iterator[sqlite3.Connection]:
    """``conn`` in one write transaction (``BEGIN IMMEDIATE``): committed when the block ends,
    rolled back if the block or the COMMIT raises (anything, cancellation too); the error raised
    is the one that failed it.

    ``wait`` False: when another connection holds the database's write lock, raises
    :class:`WriteLockBusy` at once instead of waiting for it (the block does not run).

    A failed COMMIT may leave the transaction open (SQLITE_BUSY: left so, the connection would
    keep the write lock and every later ``BEGIN`` fail) or SQLite may have rolled it back
    already (SQLITE_FULL, SQLITE_IOERR: a ``ROLLBACK`` would then fail with "no transaction is
    active" and hide the real error); it is ended either way. The caller holds its store's lock.
    """
    if wait:
        conn.execute("BEGIN IMMEDIATE")
    else:
        _begin_without_waiting(conn)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _begin_without_waiting(conn: sqlite3.Connection) -> None:
    (timeout_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise WriteLockBusy("another connection holds the database's write lock") from exc
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
