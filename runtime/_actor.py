"""Actors: the base class an actor derives from, its states and status.

An actor handles one message at a time; long work runs as a child task started with
:meth:`ActorContext.pipe` (or, for an ask handled at once, in the asking task), whose outcome comes
back to the actor, so the instance's state has a single writer while hundreds of requests are in
flight. The cell that runs the instances is in
:mod:`runtime._cell`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from runtime._context import ActorContext

__all__ = ["Actor", "ActorState", "ActorStatus", "Restart", "unwrap_group"]

M_contra = TypeVar("M_contra", contravariant=True)


class Restart(Enum):
    """When a supervisor restarts a child."""

    PERMANENT = "permanent"
    """Always."""
    TRANSIENT = "transient"
    """Only after a crash; a normal exit is final."""
    TEMPORARY = "temporary"
    """Never."""


class ActorState(Enum):
    """Lifecycle of an actor as the system sees it."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ActorStatus:
    """A snapshot of one actor for health checks and metrics."""

    name: str
    state: ActorState
    restart_count: int
    mailbox_depth: int
    mailbox_capacity: int
    in_flight: int
    dropped: int
    restart: Restart = Restart.PERMANENT


class Actor(Generic[M_contra]):
    """Base class of actors that handle messages of type ``M_contra`` (normally a union).

    Override :meth:`receive`, dispatching with ``match`` and ending in ``assert_never``; its
    return value answers an ``ask`` (of the type the message declares, see :class:`Ask`), an
    exception it raises is re-raised in the caller (and crashes the instance if it matches the
    child's ``crash_on``). ``self.context`` is set before :meth:`on_start` runs.
    """

    context: ActorContext

    async def on_start(self) -> None:
        """Called once per instance before its first message; raising here is a crash."""

    async def on_stop(self) -> None:
        """Called once per instance when it ends for any reason (shielded, with a timeout)."""

    async def receive(self, message: M_contra) -> Any:
        """Handle one message."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {message!r}")

    def immediate_messages(self) -> tuple[type, ...]:
        """Message types this instance handles in :meth:`handle_now`, without awaiting.

        Read once after :meth:`on_start`. When the actor is idle (its loop waits on an empty
        mailbox) an ask or tell of one of these types is handled at once, in the sender's task,
        by :meth:`handle_now`: the same order and the same single writer as through the mailbox
        (nothing else of the actor runs meanwhile), without the two task switches of a round
        trip. Otherwise it is queued and handled by :meth:`receive` as usual.
        """
        return ()

    def handle_now(self, message: M_contra) -> Any:
        """Handle one message of :meth:`immediate_messages` synchronously (see there).

        Answers like :meth:`receive` (return value, or exception), or delegates its answer with
        :meth:`ActorContext.pipe` (``reply_to`` the request): a sender's ``ask`` then runs that
        work itself, in its own task (it would only wait for it), and answers with its outcome as
        for any ask; work piped for a ``tell``, and any further work, runs as a child task in the
        actor's task group. Either way it is cancelled when the sender gives up or the instance
        ends.
        """
        raise NotImplementedError(f"{type(self).__name__} has no handle_now()")


def unwrap_group(error: Exception) -> Exception:
    """The single error inside (nested) exception groups, or the group itself."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
