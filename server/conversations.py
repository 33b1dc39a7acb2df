"""Conversations: who may use which (:class:`ConversationOwners`), and their actors
(:class:`SessionDirectory`).

Conversation ids are issued by the server: 128 random bits, hex, so knowing one is the capability
to use it. Each id is recorded with the credential that created it (a fingerprint of the bearer
token, never the token; ``""`` when authentication is off), and a socket may resume or clear only
conversations created under its own credential. An id the server did not issue, or issued to
another credential, is answered ``unknown_conversation`` alike, so that probing learns nothing.

Live conversations are bounded: in total (``server.max_conversations`` actors; those with no
request running are stopped to make room, least recently used first) and per socket (its running
requests hold their conversations; the one a socket is on holds nothing between its requests, so
sockets left open never keep a new conversation out).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import SecretStr

from actors.chat import EXPIRE_BATCH, HistoryStore, HistoryStoreClosed, session_actor_name
from runtime import ActorRef, ActorSystem, ChildSpec, Clock, MonotonicClock
from runtime.sqlite import open_sqlite

__all__ = [
    "ConversationOwners",
    "ConversationStoreUnavailable",
    "SessionDirectory",
    "TooManyConversations",
    "expire_conversations",
    "owner_of_token",
    "retention_sweep",
]

logger = logging.getLogger("server.conversations")

_BUSY_TIMEOUT_MS = 500
"""How long an owners statement waits for another connection's write lock. The statements run
on the event loop (a thread per INSERT was measured slower for bursts of new conversations), so
this bounds how long a locked database (a backup, another process's long write) freezes the
server; past it the request is answered ``unavailable``."""
_SESSION_IDLE_SECONDS = 600.0
_SWEEP_INTERVAL = 30.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversation_owners (
    conversation_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversation_owners_by_age ON conversation_owners (created_at);
"""


class TooManyConversations(RuntimeError):
    """Every live conversation is in use: no new one can start now."""


class ConversationStoreUnavailable(RuntimeError):
    """The owners' table cannot be read or written now (its database is locked or failing)."""


def owner_of_token(token: SecretStr | None) -> str:
    """The owner recorded for conversations created with ``token`` (``""``: no auth)."""
    if token is None:
        return ""
    digest = hashlib.sha256(b"mcp-backend conversation owner\0" + token.get_secret_value().encode())
    return digest.hexdigest()[:32]


class ConversationOwners:
    """Issued conversation ids and their owners, in a table of the history database.

    Thread-safe (one connection behind a lock); each call is one short statement, like the
    history store's, so it runs on the event loop, waiting at most half a second for another
    connection's write lock. :meth:`create` and :meth:`owned_by` raise
    :class:`ConversationStoreUnavailable` when the database is locked past that, or failing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        # The schema is made with the default (long) wait: workers starting together share it.
        self._db = open_sqlite(self.path, _SCHEMA)
        self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")

    def create(self, owner: str) -> str:
        """A new conversation id, recorded as ``owner``'s."""
        conversation_id = secrets.token_hex(16)
        with self._lock, self._unavailable_on_error():
            self._db.execute(
                "INSERT INTO conversation_owners VALUES (?, ?, ?)",
                (conversation_id, owner, time.time()),
            )
        return conversation_id

    def owned_by(self, conversation_id: str, owner: str) -> bool:
        """Whether the server issued ``conversation_id`` to ``owner``."""
        with self._lock, self._unavailable_on_error():
            row = self._db.execute(
                "SELECT owner FROM conversation_owners WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
        return row is not None and secrets.compare_digest(row[0], owner)

    @contextlib.contextmanager
    def _unavailable_on_error(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            logger.warning("conversation owners in %s: %s", self.path, exc)
            raise ConversationStoreUnavailable(
                "the conversation store is not available right now; try again shortly"
            ) from None

    def expire(self, before: float, keep: Collection[str] = ()) -> int:
        """Forget up to :data:`EXPIRE_BATCH` ids issued before ``before`` (epoch seconds) whose
        conversation is not in the history (never written, or expired), except ``keep``; how
        many. The history's table is in the same database file; with ``":memory:"`` it is not
        (each connection has its own), so nothing is forgotten."""
        if self.path == ":memory:":
            return 0
        kept = list(keep)
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM conversation_owners WHERE rowid IN (SELECT o.rowid FROM"
                " conversation_owners AS o LEFT JOIN conversations AS c ON c.id ="
                " o.conversation_id WHERE o.created_at < ? AND c.id IS NULL AND"
                f" o.conversation_id NOT IN ({','.join('?' * len(kept))}) LIMIT ?)",
                (before, *kept, EXPIRE_BATCH))
        return cursor.rowcount

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"<ConversationOwners [{self.path}]>"


async def expire_conversations(history: HistoryStore, owners: ConversationOwners,
                               live: Collection[str], before: float) -> tuple[int, int]:
    """One retention pass: delete the conversations last written before ``before`` (epoch
    seconds) and forget the ids issued before it and never written, except ``live`` ones, in
    short batches (each its own transaction, in a worker thread); how many of each."""
    expired = forgotten = 0
    while len(ids := await anyio.to_thread.run_sync(history.expire, before, live)) > 0:
        expired += len(ids)
        if len(ids) < EXPIRE_BATCH:
            break
    while (count := await anyio.to_thread.run_sync(owners.expire, before, live)) > 0:
        forgotten += count
        if count < EXPIRE_BATCH:
            break
    return expired, forgotten


async def retention_sweep(history: HistoryStore, owners: ConversationOwners,
                          live: Callable[[], Collection[str]], retention: float) -> None:
    """Every tenth of ``retention`` seconds (at most hourly), :func:`expire_conversations`
    what has not been written for ``retention`` seconds, sparing the ``live()`` ones (in use,
    or a socket is on them); until cancelled. A locked or failing database is logged and tried
    again at the next pass."""
    interval = max(0.5, min(3600.0, retention / 10))
    while True:
        try:
            expired, forgotten = await expire_conversations(
                history, owners, live(), time.time() - retention)
        except (sqlite3.Error, HistoryStoreClosed) as exc:
            logger.warning("history retention: %s", exc)
        else:
            if expired or forgotten:
                logger.info("history retention: %d conversations deleted, %d unused ids"
                            " forgotten", expired, forgotten)
        await anyio.sleep(interval)


@dataclass
class _Entry:
    idle_since: float
    users: int = 0
    new: bool = False
    """Issued just now and its actor not started yet: it has no history to read."""


class SessionDirectory:
    """Finds or starts the SessionActor of a conversation; stops those left idle.

    A conversation no socket has used for ``idle_seconds`` has its actor stopped (by
    :meth:`sweep`); its history is in the store, so its next turn starts a fresh actor that reads
    it back. At most ``max_conversations`` are live: :meth:`acquire` stops idle ones to make room
    and raises :class:`TooManyConversations` when every one is in use.

    ``spec_for(conversation_id, new)`` builds an actor's spec; ``new`` says the conversation was
    issued just now (``acquire(..., new=True)``) and this is its first actor.
    """

    def __init__(
        self,
        system: ActorSystem,
        spec_for: Callable[[str, bool], ChildSpec],
        *,
        max_conversations: int = 1000,
        idle_seconds: float = _SESSION_IDLE_SECONDS,
        clock: Clock | None = None,
    ) -> None:
        self._system = system
        self._spec_for = spec_for
        self._max = max_conversations
        self._idle_seconds = idle_seconds
        self._clock = clock or MonotonicClock()
        self._entries: dict[str, _Entry] = {}
        self._starting: dict[str, anyio.Event] = {}
        """Conversations whose actor is starting: :meth:`session` waits for it."""
        self._stopping: dict[str, anyio.Event] = {}
        """Conversations whose actor is stopping: :meth:`session` waits before starting it."""

    def live(self) -> set[str]:
        """The conversations in use now (a request runs in it), and those whose actor is
        starting."""
        in_use = {conversation_id for conversation_id, entry in self._entries.items()
                  if entry.users}
        return in_use | set(self._starting)

    def __len__(self) -> int:
        return len(self._entries)

    async def acquire(self, conversation_id: str, *, new: bool = False) -> None:
        """A socket uses the conversation: its actor is kept alive until :meth:`release`.

        ``new``: the server issued the conversation just now (its actor will read no history).
        Raises :class:`TooManyConversations` if it is not live and no live one is idle.
        """
        entry = self._entries.get(conversation_id)
        if entry is not None:
            entry.users += 1
            return
        evicted = None
        if len(self._entries) >= self._max:
            idle = [(e.idle_since, c) for c, e in self._entries.items() if e.users == 0]
            if not idle:
                raise TooManyConversations(
                    f"all {self._max} conversations are in use; try again later"
                )
            evicted = min(idle)[1]
            del self._entries[evicted]
        # The slot is taken before anything awaits: a socket that comes while the idle one
        # stops finds the directory full, instead of evicting the same one and entering too.
        self._entries[conversation_id] = _Entry(self._clock.now(), users=1, new=new)
        if evicted is not None:
            try:
                await self._stop(evicted)
            except BaseException:
                self.release(conversation_id)
                raise

    def release(self, conversation_id: str) -> None:
        """A socket no longer uses the conversation."""
        entry = self._entries.get(conversation_id)
        if entry is not None:
            entry.users = max(0, entry.users - 1)
            entry.idle_since = self._clock.now()

    async def session(self, conversation_id: str) -> ActorRef:
        """The conversation's actor, started if it is not running."""
        name = session_actor_name(conversation_id)
        stopping = self._stopping.get(conversation_id)
        if stopping is not None:  # evicted a moment ago and used again: not the stopping actor
            await stopping.wait()
        while True:
            try:
                return self._system.ref(name)
            except KeyError:
                pass
            # Two sockets resuming one conversation must not both start it; different
            # conversations start at once (each start reads its history from SQLite: a burst
            # of new conversations waited for every start before its own behind one lock).
            starting = self._starting.get(conversation_id)
            if starting is None:
                break
            await starting.wait()  # then its actor, or a start that failed: try again
        started = self._starting[conversation_id] = anyio.Event()
        entry = self._entries.get(conversation_id)
        new = entry is not None and entry.new
        if entry is not None:
            entry.new = False  # a later start (after an eviction) reads what this one wrote
        try:
            # Shielded: a turn cancelled while its conversation's actor starts must not cancel
            # the start, which would leave a registered actor that never serves its mailbox.
            with anyio.CancelScope(shield=True):
                ref = await self._system.spawn(self._spec_for(conversation_id, new),
                                               under="sessions")
            return ref
        finally:
            del self._starting[conversation_id]
            started.set()

    async def sweep(self, interval: float = _SWEEP_INTERVAL) -> None:
        """Call :meth:`sweep_once` every ``interval`` seconds, until cancelled."""
        while True:
            await self._clock.sleep(interval)
            await self.sweep_once()

    async def sweep_once(self) -> list[str]:
        """Stop the actors of conversations idle too long; returns their ids."""
        now = self._clock.now()
        idle = [
            conversation_id
            for conversation_id, entry in self._entries.items()
            if entry.users == 0 and now - entry.idle_since >= self._idle_seconds
        ]
        for conversation_id in idle:  # all out before the first await, as in acquire
            del self._entries[conversation_id]
        for conversation_id in idle:
            await self._stop(conversation_id)
        return idle

    async def _stop(self, conversation_id: str) -> None:
        """Stop the actor of a conversation already out of ``_entries``."""
        stopped = self._stopping[conversation_id] = anyio.Event()
        try:
            with contextlib.suppress(KeyError):  # it has ended already (sessions are temporary)
                await self._system.stop_actor(session_actor_name(conversation_id), under="sessions")
        finally:
            stopped.set()
            if self._stopping.get(conversation_id) is stopped:
                del self._stopping[conversation_id]

    def __repr__(self) -> str:
        in_use = sum(1 for entry in self._entries.values() if entry.users)
        return f"<SessionDirectory [{len(self._entries)} live, {in_use} in use | max {self._max}]>"
