"""What a chat connection is given: the :class:`ChatHub` of all sockets (counts for /health and
/metrics, the graceful drain), where it finds conversations and their owners, and its limits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from runtime import ActorRef
from server._outbox import CLOSE_GOING_AWAY

if TYPE_CHECKING:
    from server.websocket import ChatConnection

__all__ = ["CLOSE_GRACE", "ChatHub", "ConnectionLimits", "Conversations", "Owners"]

logger = logging.getLogger("server.websocket")

CLOSE_GRACE = 2.0
"""Seconds a closing socket (or a draining hub) waits for the close to be flushed."""


class Conversations(Protocol):
    """Where a connection finds the SessionActor of a conversation."""

    async def acquire(self, conversation_id: str, *, new: bool = False) -> None:
        """This socket uses the conversation (its actor is kept alive meanwhile); ``new``: it
        was issued just now.

        Raises :class:`~server.conversations.TooManyConversations` when there is no room.
        """
        ...

    async def session(self, conversation_id: str) -> ActorRef:
        """The conversation's actor, started if it is not running."""
        ...

    def release(self, conversation_id: str) -> None:
        """This socket no longer uses the conversation."""
        ...


class Owners(Protocol):
    """Which conversation ids were issued, and to whom."""

    def create(self, owner: str) -> str:
        """A new, unguessable conversation id recorded as ``owner``'s.

        Raises :class:`~server.conversations.ConversationStoreUnavailable` when it cannot be
        recorded now.
        """
        ...

    def owned_by(self, conversation_id: str, owner: str) -> bool:
        """Whether ``conversation_id`` was issued to ``owner``.

        Raises :class:`~server.conversations.ConversationStoreUnavailable` when it cannot be
        read now.
        """
        ...


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits, from ``server:`` in the configuration."""

    max_message_bytes: int
    max_messages_per_minute: int
    max_concurrent_turns: int
    max_conversations_per_socket: int = 8
    """Conversations the socket's running requests use at once."""
    turn_timeout: float | None = None
    """Seconds a turn may take from its frame to its end (queueing included); then ``timeout``."""
    max_turns_in_flight: int | None = None
    """Turns of every socket of the process running or waiting at once (``None``: no bound)."""


class ChatHub:
    """All open chat sockets: counts for /health and /metrics, the graceful drain, and the bound
    on how many may be open at once (``max_connections``; ``None``: no bound)."""

    def __init__(self, max_connections: int | None = None) -> None:
        self.connections: set[ChatConnection] = set()
        self.max_connections = max_connections
        self.admitted = 0
        """Sockets admitted and not yet closed (counted before their handshake is answered)."""
        self.connections_refused = 0
        self.draining = False
        self.turns_in_flight = 0
        self.clears_in_flight = 0
        self.turns_total: dict[str, int] = {}
        self.frames_rejected: dict[str, int] = {}
        self.connections_total = 0
        self._changed = anyio.Event()

    def take_turn(self, most: int | None) -> bool:
        """Count a turn about to start; ``False`` (nothing counted) when ``most`` run already.

        Checked and counted in one step, with no await between: a turn that counted before it
        started (its conversation claimed, its ``processing`` envelope sent, each an await) let
        every socket whose frame came in the same pass of the loop through the bound. Whoever
        took the slot gives it back exactly once: :meth:`turn_ended` if the turn ran,
        :meth:`turn_not_started` if it was refused or cancelled before it ran.
        """
        if most is not None and self.turns_in_flight >= most:
            return False
        self.turns_in_flight += 1
        return True

    def turn_not_started(self) -> None:
        """Give back a slot taken by :meth:`take_turn` for a turn that never ran."""
        self.turns_in_flight -= 1
        self._changed.set()

    def turn_ended(self, outcome: str) -> None:
        self.turns_in_flight -= 1
        self.turns_total[outcome] = self.turns_total.get(outcome, 0) + 1
        self._changed.set()

    def clear_started(self) -> None:
        self.clears_in_flight += 1

    def clear_ended(self) -> None:
        self.clears_in_flight -= 1
        self._changed.set()

    def _idle(self) -> bool:
        """No turn and no clear_history has yet to be answered."""
        return not self.turns_in_flight and not self.clears_in_flight

    def conversations_on(self) -> set[str]:
        """The conversations open sockets are on."""
        return {connection.conversation_id for connection in self.connections
                if connection.conversation_id is not None}

    def admit(self) -> bool:
        """Count a socket about to be accepted; ``False`` (refused, counted) when
        ``max_connections`` are open already. Every admitted socket calls :meth:`left`."""
        if self.max_connections is not None and self.admitted >= self.max_connections:
            self.connections_refused += 1
            return False
        self.admitted += 1
        return True

    def left(self) -> None:
        """An admitted socket is closed."""
        self.admitted -= 1

    def connection_opened(self, connection: ChatConnection) -> None:
        self.connections.add(connection)
        self.connections_total += 1

    def connection_closed(self, connection: ChatConnection) -> None:
        self.connections.discard(connection)
        self._changed.set()

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        with anyio.move_on_after(timeout):
            while not done():
                self._changed = anyio.Event()
                await self._changed.wait()

    def frame_rejected(self, reason: str) -> None:
        self.frames_rejected[reason] = self.frames_rejected.get(reason, 0) + 1

    async def drain(self, timeout: float) -> None:
        """Refuse new turns and clears, let running ones finish within ``timeout``, then cancel
        the turns left.

        Every socket is closed with 1001 (going away) afterwards, each turn and clear having got
        its last envelope first (a clear still waiting behind a turn is answered once the turn
        ends).
        """
        self.draining = True
        await self._until(self._idle, timeout)
        if self.turns_in_flight:
            logger.warning("cancelling %d turns still running at shutdown", self.turns_in_flight)
        for connection in list(self.connections):
            connection.cancel_turns("shutting_down")
        await self._until(self._idle, CLOSE_GRACE)
        for connection in list(self.connections):
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
        await self._until(lambda: not self.connections, CLOSE_GRACE)

    def __repr__(self) -> str:
        bound = "" if self.max_connections is None else f" of {self.max_connections}"
        return (
            f"<ChatHub [{len(self.connections)} sockets{bound}, {self.turns_in_flight} turns"
            f"{' | draining' if self.draining else ''}]>"
        )
