"""One process per ledger file: an exclusive lock beside the database, and a start-up check.

Why a lock and not transactions: the ledger holds its reservations in memory and reads the day's
total from the file only when it starts, so two processes on one file would each grant the whole
daily limit. Making every reservation a transaction on the file would put a disk write on every
request; a second server on the same file is a configuration mistake, so it is refused with a
message that says what to do. (Several processes sharing one budget exactly is the cluster
backend's job, with ``cluster.redis_url``.)

The lock is ``flock`` on ``<db_path>.lock``: the kernel drops it when the process dies, even by
SIGKILL, so a crashed server never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from types import TracebackType

from ._config import CostConfig
from ._errors import LLMClientError
from ._ledger_store import LedgerStore

__all__ = ["LedgerLock", "LedgerUnavailable", "check_ledger"]


class LedgerUnavailable(LLMClientError):
    """The ledger cannot account for money now (its database is unusable or in use elsewhere).

    Reservations are refused at once while it lasts, on every provider alike, so the router does
    not fall back on it. Retryable: the ledger reopens its database by itself.
    """

    retryable = True
    error_type = "ledger_unavailable"


def ledger_path(config: CostConfig) -> Path | None:
    """The database file of ``config`` (``~`` expanded), or ``None`` when nothing is persisted."""
    if not config.track_costs or config.db_path == ":memory:":
        return None
    return Path(config.db_path).expanduser()


def check_ledger(config: CostConfig) -> None:
    """Open (creating if needed) the ledger database of ``config`` and close it again.

    Raises :class:`LedgerUnavailable` naming the file and the reason when it cannot be used.
    """
    path = ledger_path(config)
    if path is None:
        return
    try:
        LedgerStore(path).close()
    except (sqlite3.Error, OSError) as exc:
        raise LedgerUnavailable(
            f"the ledger database {str(path)!r} cannot be used: {exc}") from None


class LedgerLock:
    """Holds ``<db_path>.lock`` exclusively while the ledger of this process uses the file.

    ``acquire`` raises :class:`LedgerUnavailable` when another process holds it. Use as a context
    manager; nothing is locked when costs are not persisted.
    """

    def __init__(self, config: CostConfig) -> None:
        path = ledger_path(config)
        self._path = None if path is None else path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._path is None or self._fd is not None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerUnavailable(
                f"the ledger lock {str(self._path)!r} cannot be created: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LedgerUnavailable(
                f"the ledger database {str(self._path)[:-5]!r} is in use by another process "
                f"(pid {holder}); two servers on one ledger file would each spend the whole "
                "daily limit: give each its own cost.db_path, or share one budget through "
                "cluster.redis_url") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> LedgerLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self._fd is not None else "free"
        path = None if self._path is None else str(self._path)
        return f"<LedgerLock {path!r} [{state}]>"
