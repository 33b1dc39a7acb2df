"""Conversation history in SQLite: one ordered list of OpenAI-shaped messages per conversation.

The database runs in WAL mode, so readers never wait for the writer and a crash loses at most the
transaction being written. Every method is one short transaction on one connection shared by all
threads behind a lock: the SessionActor calls them through ``anyio.to_thread.run_sync``, so they
must not block the event loop, and they are quick enough (milliseconds) that a single connection
is never the bottleneck. Appends go through :class:`~actors.chat.GroupCommit`, which hands the
appends of many conversations to :meth:`HistoryStore.append_batch` as one transaction, on the
event loop itself when that cannot wait (``wait=False``): the one thing that could make a write
wait or sync to disk on the loop, a checkpoint of the write-ahead log, runs only in writes that
may wait (SQLite's own automatic checkpoint is off; the store checkpoints after a commit that
brings the log's estimated size to ``CHECKPOINT_PAGES`` pages, SQLite's default).

The messages of turns that wait behind their conversation's running turn are kept apart
(``queued_messages``), not in the history, whose order is the order turns run: a turn's start
moves its own there (:class:`TurnStart`), and :meth:`HistoryStore.adopt_queued` those of turns a
killed process never started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from runtime.sqlite import WriteLockBusy, open_sqlite, write_transaction

__all__ = ["CHECKPOINT_PAGES", "EXPIRE_BATCH", "HistoryStore", "HistoryStoreClosed", "TurnStart",
           "WriteLockBusy"]

logger = logging.getLogger(__name__)

Message = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id  TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    message          TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated_at);
CREATE TABLE IF NOT EXISTS queued_messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id  TEXT NOT NULL,
    message          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS queued_by_conversation ON queued_messages (conversation_id, id);
"""
EXPIRE_BATCH = 500
"""Conversations deleted per transaction by :meth:`HistoryStore.expire` (short write locks)."""
CHECKPOINT_PAGES = 1000
"""The write-ahead log's estimated size, in pages, past which a write that may wait checkpoints
it (SQLite's ``wal_autocheckpoint`` default)."""
_PAGE = 4096
_PAGES_PER_WRITE = 4  # a transaction's table, index and header pages, before its text's own


class HistoryStoreClosed(RuntimeError):
    """The store was used after :meth:`HistoryStore.close`."""


@dataclass(eq=False)
class TurnStart:
    """What a turn's first append does besides appending: it settles the turn's queued message
    (``queued``, from :meth:`HistoryStore.queue`) in the same transaction, and keeps the rows
    ``max_stored_messages`` trimmed for it (``trimmed``, ``(seq, text)``, filled by the write),
    so that a refused turn's :meth:`HistoryStore.retract` can put them back."""

    queued: int | None = None
    trimmed: list[tuple[int, str]] = field(default_factory=list)


class HistoryStore:
    """Persistent conversations: ``load``, ``append``, ``retract``, ``clear``, ``exists``,
    ``expire``; and the messages of turns that wait for their conversation (``queue``).

    Thread-safe (one connection behind a lock). ``path`` ``":memory:"`` keeps everything in
    memory; any other path has its parent directory created. ``max_stored_messages`` bounds what
    a conversation keeps: an append deletes what falls before its newest ``max_stored_messages``
    (``None``: everything is kept). A write waits up to ``busy_timeout`` seconds for another
    connection's lock (a backup), then fails with SQLITE_BUSY. Close it (or use it as a context
    manager) when done.
    """

    def __init__(self, path: str | Path, max_stored_messages: int | None = None, *,
                 busy_timeout: float = 10.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._keep = max_stored_messages
        self._db: sqlite3.Connection | None = open_sqlite(self.path, _SCHEMA,
                                                          timeout=busy_timeout)
        self._db.execute("PRAGMA wal_autocheckpoint = 0")  # see :meth:`_checkpoint_if_due`
        self._log_pages = 0  # written since the last checkpoint, estimated

    def load(self, conversation_id: str, limit: int | None = None) -> list[Message]:
        """The messages of a conversation, oldest first (only the newest ``limit`` if given).

        An unknown conversation has no messages.
        """
        with self._lock:
            db = self._connection()
            if limit is None:
                rows = db.execute(
                    "SELECT message FROM messages WHERE conversation_id = ? ORDER BY seq",
                    (conversation_id,),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT message FROM (SELECT seq, message FROM messages"
                    " WHERE conversation_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                    (conversation_id, max(0, limit)),
                ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def load_newest(
        self,
        conversation_id: str,
        limit: int,
        select: Callable[[Iterator[Message]], list[Message]],
    ) -> list[Message]:
        """What ``select`` keeps of the conversation's newest ``limit`` messages, given to it
        newest first and read (and decoded) one at a time as it asks for them.

        For a reader that stops early (:func:`~actors.chat._trimming.newest_units`): rows it
        does not reach are never read into memory. ``select`` runs under the store's lock.
        """
        with self._lock:
            rows = self._connection().execute(
                "SELECT message FROM messages WHERE conversation_id = ? ORDER BY seq DESC"
                " LIMIT ?", (conversation_id, max(0, limit)))
            try:
                return select(json.loads(row[0]) for row in rows)
            finally:
                rows.close()

    def append(self, conversation_id: str, messages: Sequence[Message]) -> None:
        """Append ``messages`` to the conversation (created if new), all or none."""
        error = self.append_batch([(conversation_id, messages)])[0]
        if error is not None:
            raise error

    def start_turn(self, conversation_id: str, message: Message,
                   queued: int | None = None) -> TurnStart:
        """:meth:`append` of a turn's first message, settling its queued message ``queued``;
        what it did, for :meth:`retract` (:class:`TurnStart`)."""
        start = TurnStart(queued)
        error = self.append_batch([(conversation_id, [message])], [start])[0]
        if error is not None:
            raise error
        return start

    def append_batch(
        self, appends: Sequence[tuple[str, Sequence[Message]]],
        starts: Sequence[TurnStart | None] | None = None, *, wait: bool = True,
    ) -> list[Exception | None]:
        """Several :meth:`append` calls in one transaction (one commit for all): each one's error,
        or ``None`` when it was written.

        Each append is still all or none on its own (a savepoint each): one that fails leaves
        the others written. ``starts`` (as many as ``appends``): the turn starts among them
        (:class:`TurnStart`). An error of the whole transaction (the store closed, the database
        locked past its timeout, a failed commit) raises and writes none; so does a full disk
        when SQLite answers it by rolling the whole transaction back (then the appends before
        the failing one are gone too: the error says why, not the savepoint it took away).

        ``wait`` False, for the event loop: raises :class:`WriteLockBusy`, having written
        nothing, rather than wait for the store's lock or the database's write lock, or
        checkpoint the log; the caller then writes in a thread.
        """
        encoded: list[list[str] | Exception] = []
        for _, messages in appends:
            try:
                encoded.append([_encoded(message) for message in messages])
            except (TypeError, ValueError) as exc:
                encoded.append(exc)
        errors: list[Exception | None] = [
            texts if isinstance(texts, Exception) else None for texts in encoded
        ]
        now = time.time()
        size = sum(len(text) for texts in encoded if isinstance(texts, list) for text in texts)
        with self._transaction(wait=wait, size=size) as db:
            for index, texts in enumerate(encoded):
                if isinstance(texts, Exception):
                    continue
                conversation_id = appends[index][0]
                start = starts[index] if starts is not None else None
                trimmed: list[tuple[int, str]] | None = None if start is None else []
                db.execute("SAVEPOINT one_append")
                try:
                    _insert(db, conversation_id, texts, now, self._keep, trimmed)
                    if start is not None and start.queued is not None:
                        db.execute("DELETE FROM queued_messages WHERE id = ?", (start.queued,))
                except sqlite3.Error as exc:
                    if not db.in_transaction:  # SQLite rolled back all (SQLITE_FULL, IOERR...)
                        raise
                    db.execute("ROLLBACK TO one_append")
                    errors[index] = exc
                else:
                    if start is not None and trimmed is not None:
                        start.trimmed = trimmed
                db.execute("RELEASE one_append")
        return errors

    def retract(self, conversation_id: str, messages: Sequence[Message],
                restore: Sequence[tuple[int, str]] = ()) -> bool:
        """Delete ``messages`` if they are the conversation's newest, all or none, and put back
        the rows ``restore`` (a :class:`TurnStart`'s ``trimmed``); whether they were. A
        conversation left with no message is forgotten, as if never written.

        For a turn that takes back what it appended (its caller holds the conversation, so
        nothing was appended after it): with ``restore``, what ``max_stored_messages`` deleted
        for that append is back too, and the conversation is as before the turn.
        """
        texts = [_encoded(message) for message in messages]
        if not texts:
            return True
        with self._transaction() as db:
            rows = db.execute(
                "SELECT seq, message FROM messages WHERE conversation_id = ?"
                " ORDER BY seq DESC LIMIT ?", (conversation_id, len(texts))).fetchall()
            found = [text for _, text in reversed(rows)] == texts
            if found:
                db.execute("DELETE FROM messages WHERE conversation_id = ? AND seq >= ?",
                           (conversation_id, rows[-1][0]))
                db.executemany(
                    "INSERT OR IGNORE INTO messages (conversation_id, seq, message)"
                    " VALUES (?, ?, ?)", [(conversation_id, seq, text) for seq, text in restore])
                db.execute("DELETE FROM conversations WHERE id = ? AND NOT EXISTS"
                           " (SELECT 1 FROM messages WHERE conversation_id = ?)",
                           (conversation_id, conversation_id))
        return found

    def queue(self, conversation_id: str, message: Message) -> int:
        """Write the message of a turn that waits for its conversation, apart from its history;
        its id, for the turn's :class:`TurnStart` (which moves it into the history) or
        :meth:`unqueue`. The conversation is created if new (so that it can expire)."""
        text = _encoded(message)
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO conversations (id, created_at, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
                (conversation_id, now, now))
            cursor = db.execute(
                "INSERT INTO queued_messages (conversation_id, message) VALUES (?, ?)",
                (conversation_id, text))
        queued = cursor.lastrowid
        assert queued is not None
        return queued

    def unqueue(self, queued: int) -> None:
        """Delete the queued message ``queued`` (its turn ended before it started)."""
        with self._transaction() as db:
            db.execute("DELETE FROM queued_messages WHERE id = ?", (queued,))

    def adopt_queued(self, conversation_id: str) -> int:
        """Append the conversation's queued messages to its history, oldest first, and forget
        them as queued; how many. For the messages of turns that never started (their process
        was killed): call it only when no turn of the conversation may still be waiting."""
        with self._lock:
            found = self._connection().execute(
                "SELECT 1 FROM queued_messages WHERE conversation_id = ? LIMIT 1",
                (conversation_id,)).fetchone()
        if found is None:
            return 0
        with self._transaction() as db:
            texts = [row[0] for row in db.execute(
                "SELECT message FROM queued_messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,))]
            if texts:
                _insert(db, conversation_id, texts, time.time(), self._keep)
                db.execute("DELETE FROM queued_messages WHERE conversation_id = ?",
                           (conversation_id,))
        return len(texts)

    def clear(self, conversation_id: str) -> None:
        """Forget the conversation and its messages (nothing happens if it is unknown); queued
        messages stay (their turns come after the clear)."""
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def expire(self, before: float, keep: Collection[str] = ()) -> list[str]:
        """Delete up to :data:`EXPIRE_BATCH` conversations last written before ``before`` (epoch
        seconds), with their messages, except those in ``keep``; returns their ids, oldest
        first. One short transaction: call again while it returns a full batch."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id FROM conversations WHERE updated_at < ? ORDER BY updated_at"
                " LIMIT ?", (before, EXPIRE_BATCH + len(keep))).fetchall()
            ids = [row[0] for row in rows if row[0] not in keep][:EXPIRE_BATCH]
            db.executemany("DELETE FROM conversations WHERE id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM queued_messages WHERE conversation_id = ?",
                           [(i,) for i in ids])
        return ids

    def exists(self, conversation_id: str) -> bool:
        """Whether the conversation has been stored (and not cleared)."""
        with self._lock:
            row = self._connection().execute(
                "SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return row is not None

    def health(self) -> dict[str, Any]:
        """``{"state": "ok"}``, or ``"down"`` with the ``error`` if the database cannot be read."""
        try:
            with self._lock:
                self._connection().execute("SELECT 1 FROM conversations LIMIT 1").fetchall()
        except (sqlite3.Error, HistoryStoreClosed) as exc:
            return {"state": "down", "error": f"{type(exc).__name__}: {exc}"}
        return {"state": "ok"}

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        """Close the connection; idempotent. Later calls raise :class:`HistoryStoreClosed`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.contextmanager
    def _transaction(self, *, wait: bool = True, size: int = 0) -> Iterator[sqlite3.Connection]:
        """The connection in one write transaction, under the lock: committed when the block
        ends, rolled back if it or the COMMIT raises (anything, cancellation too); ``size``: the
        bytes of text it writes.

        A failed COMMIT may leave the transaction open (SQLITE_BUSY) or already rolled back
        (SQLITE_FULL, SQLITE_IOERR): it is ended either way, so the connection holds no write
        lock and the next call can begin; the error raised is the one that failed it.

        ``wait`` False: :class:`WriteLockBusy` at once where it would wait for a lock or
        checkpoint (see :meth:`append_batch`).
        """
        if not self._lock.acquire(blocking=wait):
            raise WriteLockBusy(f"history store {self.path!r} is being written")
        try:
            if not wait and self._log_pages >= CHECKPOINT_PAGES:
                raise WriteLockBusy(f"history store {self.path!r} is due for a checkpoint")
            with write_transaction(self._connection(), wait=wait) as db:
                yield db
            self._log_pages += _PAGES_PER_WRITE + size // _PAGE
            if wait:
                self._checkpoint_if_due(db)
        finally:
            self._lock.release()

    def _checkpoint_if_due(self, db: sqlite3.Connection) -> None:
        """Copy the log into the database once it holds ``CHECKPOINT_PAGES`` (SQLite's own
        automatic checkpoint, moved off the event loop): the log is then reused from its start,
        so it stays bounded. A failure is logged and tried again at the next write; the write
        before it stands."""
        if self._log_pages < CHECKPOINT_PAGES:
            return
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            logger.warning("history store: checkpointing the write-ahead log failed (%s: %s)",
                           type(exc).__name__, exc)
            return
        self._log_pages = 0

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise HistoryStoreClosed(f"history store {self.path!r} is closed")
        return self._db

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HistoryStore {self.path!r} [{'closed' if self._db is None else 'open'}]>"


def _encoded(message: Message) -> str:
    """The JSON text of ``message``, UTF-8 as written, or all ASCII when it holds a lone
    surrogate (a tool result, a model's split escape): SQLite cannot bind that as UTF-8, and the
    error would fail every append of its transaction. ``\\udXXX`` escapes load back exactly."""
    text = json.dumps(message, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(message)
    return text


def _insert(db: sqlite3.Connection, conversation_id: str, texts: list[str], now: float,
            keep: int | None, trimmed: list[tuple[int, str]] | None = None) -> None:
    """Append ``texts``; delete what falls before the newest ``keep`` (into ``trimmed``)."""
    db.execute(
        "INSERT INTO conversations (id, created_at, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
        (conversation_id, now, now),
    )
    (last,) = db.execute(
        "SELECT COALESCE(MAX(seq), -1) FROM messages WHERE conversation_id = ?",
        (conversation_id,),
    ).fetchone()
    db.executemany(
        "INSERT INTO messages (conversation_id, seq, message) VALUES (?, ?, ?)",
        [(conversation_id, last + 1 + i, text) for i, text in enumerate(texts)],
    )
    newest = last + len(texts)
    if keep is not None and newest >= keep:  # the messages the newest ``keep`` leave out
        if trimmed is not None:
            trimmed.extend(db.execute(
                "SELECT seq, message FROM messages WHERE conversation_id = ? AND seq <= ?"
                " ORDER BY seq", (conversation_id, newest - keep)))
        db.execute("DELETE FROM messages WHERE conversation_id = ? AND seq <= ?",
                   (conversation_id, newest - keep))
