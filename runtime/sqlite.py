"""Opening a SQLite database the way every store of this project uses it (domain-free).

One connection per store, shared by threads behind the store's own lock
(``check_same_thread=False``); transactions issued by the store (``isolation_level=None``, so
``BEGIN IMMEDIATE`` ... ``COMMIT`` is explicit and nothing stays half-open between calls). WAL
mode lets readers read while one writer writes; ``synchronous=NORMAL`` keeps a commit to one
``write()`` of the log (a power loss may lose the last commits, never corrupts the file); a writer
waits up to ``timeout`` seconds for another connection's lock; foreign keys are enforced.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["open_sqlite"]


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
