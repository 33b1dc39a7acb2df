"""Persistence behind the LedgerActor: settled charges and the spend of each day, in SQLite.

The store is synchronous and every call is one short transaction, so the actor may call it directly
or from a worker thread (``anyio.to_thread.run_sync``). Calls are serialized by a lock: the
connection is shared by whichever worker thread runs the call, never used by two at once.

WAL mode lets a reader (a ``/health`` page, a second process reporting spend) read while the ledger
writes, and ``synchronous=NORMAL`` keeps a commit to one ``write()`` of the log: a power loss may
lose the last commits but never corrupts the file. Because the running total of a day lives in the
database, a restarted ledger continues the day where it stopped instead of starting from zero.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from types import TracebackType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runtime.sqlite import open_sqlite, write_transaction

__all__ = ["LedgerStore", "day_key", "day_span"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    day TEXT NOT NULL,
    at REAL NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    cost REAL NOT NULL,
    request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_day ON charges (day);
CREATE TABLE IF NOT EXISTS day_totals (
    day TEXT PRIMARY KEY,
    total REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    amount REAL NOT NULL,
    request_id TEXT NOT NULL
);
"""


def day_key(now: datetime, tz: str) -> str:
    """Return the ledger day (``YYYY-MM-DD``) that the instant ``now`` falls on in zone ``tz``.

    Raises ``ValueError`` if ``now`` is naive (its instant would be ambiguous) or ``tz`` is not a
    known IANA zone name.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("day_key() needs a timezone-aware datetime, got a naive one")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc
    return now.astimezone(zone).date().isoformat()


def day_span(now: datetime, tz: str) -> tuple[str, datetime]:
    """``day_key(now, tz)`` and the instant that day ends (the next local midnight, in UTC).

    The day is the same for every instant from ``now`` up to (not including) the end, so a
    caller may reuse it until then instead of converting every instant. The end is the first
    instant whose local date is the next one, also where that midnight falls in a DST gap or
    overlap (``fold=0``: its first occurrence). Raises like :func:`day_key`.
    """
    day = day_key(now, tz)
    zone = ZoneInfo(tz)
    midnight = datetime.combine(date.fromisoformat(day) + timedelta(days=1), dt_time(0),
                                tzinfo=zone)
    return day, midnight.astimezone(UTC)


class LedgerStore:
    """Settled charges and per-day spend in one SQLite file (WAL mode).

    Opening creates the parent directories and the schema; reopening an existing file continues
    its totals. Use as a context manager or call ``close()``. Thread-safe: calls are serialized.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self._path = str(path)
        self._lock = threading.Lock()
        # A charge and its day total are one transaction (BEGIN IMMEDIATE ... COMMIT); a write
        # waits up to ``busy_timeout`` seconds for another connection's lock (a backup).
        self._conn: sqlite3.Connection | None = open_sqlite(self._path, _SCHEMA,
                                                            timeout=busy_timeout)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def journal_mode(self) -> str:
        """The journal mode SQLite reports (``"wal"`` for a file database)."""
        with self._lock:
            row = self._connection().execute("PRAGMA journal_mode").fetchone()
        return str(row[0])

    def add_charge(
        self,
        day: str,
        cost: float,
        provider: str,
        model: str,
        request_id: str,
        *,
        at: float | None = None,
    ) -> None:
        """Record a settled charge of ``cost`` USD on ``day`` and add it to the day's total.

        ``at`` is the wall-clock time of settlement (seconds since the epoch, default now); it is
        recorded for audit only. One transaction: either both the charge and the new total are
        stored or neither. Raises ``ValueError`` for a negative or non-finite cost.
        """
        if not math.isfinite(cost) or cost < 0:
            raise ValueError(f"a charge must be a finite, non-negative cost, got {cost!r}")
        stamp = time.time() if at is None else at
        with self._lock, write_transaction(self._connection()) as conn:
            conn.execute(
                "INSERT INTO charges (day, at, provider, model, cost, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (day, stamp, provider, model, cost, request_id),
            )
            conn.execute(
                "INSERT INTO day_totals (day, total) VALUES (?, ?)"
                " ON CONFLICT (day) DO UPDATE SET total = total + excluded.total",
                (day, cost),
            )

    def add_charges(self, charges: Sequence[tuple[str, float, str, str, str]], *,
                    holds: Sequence[tuple[int, str, str, float, str]] = (),
                    released: Sequence[int] = ()) -> None:
        """Record several charges ``(day, cost, provider, model, request_id)`` in one transaction.

        The same rows and day totals as :meth:`add_charge` once per charge (each total is added
        to charge by charge, in order, so the sums are the same floats), but one commit for all:
        either every charge is stored or none. ``holds`` (``(id, provider, model, amount,
        request_id)``) are open reservations to remember, ``released`` the ids of remembered
        ones that ended, in the same transaction (see :meth:`take_holds`). Raises
        ``ValueError`` (before writing anything) for a negative or non-finite cost.
        """
        for charge in charges:
            cost = charge[1]
            if not math.isfinite(cost) or cost < 0:
                raise ValueError(f"a charge must be a finite, non-negative cost, got {cost!r}")
        stamp = time.time()
        with self._lock, write_transaction(self._connection()) as conn:
            conn.executemany(
                "INSERT INTO charges (day, at, provider, model, cost, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(day, stamp, provider, model, cost, request_id)
                 for day, cost, provider, model, request_id in charges],
            )
            conn.executemany(
                "INSERT INTO day_totals (day, total) VALUES (?, ?)"
                " ON CONFLICT (day) DO UPDATE SET total = total + excluded.total",
                [(charge[0], charge[1]) for charge in charges],
            )
            if released:
                conn.executemany("DELETE FROM holds WHERE id = ?", [(i,) for i in released])
            if holds:
                conn.executemany("INSERT OR REPLACE INTO holds (id, provider, model, amount,"
                                 " request_id) VALUES (?, ?, ?, ?, ?)", holds)

    def take_holds(self, day: str) -> list[tuple[str, str, float, str]]:
        """Charge every remembered open reservation what it holds on ``day`` and forget it, in
        one transaction; return them (``(provider, model, amount, request_id)``).

        For a ledger starting in a new process: the reservations still remembered are those
        of a process that ended before settling them (one process per file).
        """
        stamp = time.time()
        with self._lock, write_transaction(self._connection()) as conn:
            rows = [(str(p), str(m), float(a), str(r)) for p, m, a, r in conn.execute(
                "SELECT provider, model, amount, request_id FROM holds ORDER BY id")]
            conn.executemany(
                "INSERT INTO charges (day, at, provider, model, cost, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(day, stamp, p, m, a, r) for p, m, a, r in rows])
            conn.executemany(
                "INSERT INTO day_totals (day, total) VALUES (?, ?)"
                " ON CONFLICT (day) DO UPDATE SET total = total + excluded.total",
                [(day, a) for _, _, a, _ in rows])
            conn.execute("DELETE FROM holds")
        return rows

    def day_total(self, day: str) -> float:
        """Return the USD settled on ``day`` so far (``0.0`` for a day without charges)."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT total FROM day_totals WHERE day = ?", (day,))
                .fetchone()
            )
        return 0.0 if row is None else float(row[0])

    def provider_totals(self, day: str) -> dict[str, float]:
        """Return the USD settled on ``day`` per provider (providers without charges absent)."""
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT provider, SUM(cost) FROM charges WHERE day = ? GROUP BY provider",
                         (day,))
                .fetchall()
            )
        return {str(provider): float(total) for provider, total in rows}

    def charge_count(self, day: str) -> int:
        """Return how many charges were settled on ``day``."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT COUNT(*) FROM charges WHERE day = ?", (day,))
                .fetchone()
            )
        return int(row[0])

    def close(self) -> None:
        """Close the database. Idempotent; any later call raises ``sqlite3.ProgrammingError``."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("Cannot operate on a closed ledger store.")
        return self._conn

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<LedgerStore {self._path!r} [{state}]>"
