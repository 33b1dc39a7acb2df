"""ActorContext: what an actor instance knows about its place in the system."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from runtime._cell_items import _Inline
from runtime._clock import Clock
from runtime._ref import ActorRef
from runtime._request import Request, Then

if TYPE_CHECKING:
    from runtime._actor import ActorState, ActorStatus
    from runtime._cell import ActorCell

__all__ = ["ActorContext"]


class ActorContext:
    """What an actor instance knows about its place in the system.

    Set as ``actor.context`` before :meth:`Actor.on_start`; valid for that instance only (its
    child tasks and timers end with it).
    """

    def __init__(self, cell: ActorCell, task_group: TaskGroup, generation: int) -> None:
        self._cell = cell
        self._task_group = task_group
        self._generation = generation
        self.request: Request | None = None
        """The request being handled right now (``None`` outside :meth:`Actor.receive`)."""
        self.asker_waits: Request | None = None
        """The ask an immediate handler is handling in its sender's task (see :meth:`pipe`)."""

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def self_ref(self) -> ActorRef:
        return self._cell.ref

    @property
    def clock(self) -> Clock:
        return self._cell.registry.clock

    @property
    def durable(self) -> Any:
        """State declared durable by the child spec: created once, survives restarts."""
        return self._cell.durable

    @property
    def restart_count(self) -> int:
        return self._cell.restart_count

    # -- other actors, by name ----------------------------------------------------------------

    def ref(self, name: str) -> ActorRef:
        """The ref of the actor called ``name`` anywhere in the system. Raises :class:`KeyError`.

        Every actor of a supervisor exists (it may not run yet) once the supervisor starts, and
        supervisors start their children in order: a sibling started earlier, or a child of a
        supervisor started earlier, can be found from :meth:`Actor.on_start`.
        """
        return self._cell.registry.cells[name].ref

    def find(self, name: str) -> ActorRef | None:
        """Like :meth:`ref`, but ``None`` when there is no actor by that name."""
        cell = self._cell.registry.cells.get(name)
        return cell.ref if cell is not None else None

    def actor_status(self, name: str) -> ActorStatus | None:
        """State, restarts and mailbox of actor ``name`` (``None`` if there is none)."""
        return self._cell.registry.actor_status(name)

    def actor_state(self, name: str) -> ActorState | None:
        """Only the state of actor ``name`` (``None`` if there is none): no snapshot built."""
        cell = self._cell.registry.cells.get(name)
        return cell.state if cell is not None else None

    def status(self) -> dict[str, ActorStatus]:
        """The status of every actor in the system, by name."""
        return self._cell.registry.status()

    def durable_of(self, name: str) -> Any:
        """The durable state of actor ``name``, for reading only. Raises :class:`KeyError`."""
        return self._cell.registry.cells[name].durable

    def children(self, supervisor: str) -> list[str]:
        """The names of ``supervisor``'s children, in start order. Raises :class:`KeyError`."""
        return self._cell.registry.children(supervisor)

    # -- time and work ------------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Sleep on the system's (injected) clock."""
        await self._cell.registry.clock.sleep(seconds)

    def start_timer(
        self, interval: float, message: object, *, repeat: bool = True
    ) -> anyio.CancelScope:
        """Send ``message`` to this actor after ``interval`` seconds of the system's clock.

        With ``repeat`` it is sent every ``interval`` seconds, but never queued twice: a tick
        that finds the previous one not yet handled is skipped. The timer ends with the instance
        (a restarted instance starts its own in :meth:`Actor.on_start`), or with ``cancel()`` on
        the returned scope.
        """
        if interval <= 0:
            raise ValueError("a timer's interval must be positive")
        scope = anyio.CancelScope()
        self._task_group.start_soon(self._cell.run_timer, scope, interval, message, repeat)
        return scope

    def pipe(
        self,
        work: Callable[..., Awaitable[Any]],
        *args: Any,
        reply_to: Request | None,
        then: Then | None = None,
    ) -> None:
        """Run ``work(*args)`` as a child task; its outcome comes back through the mailbox.

        ``reply_to`` (normally :attr:`request`, or ``None`` for work that answers nobody) is
        answered later: by ``then(outcome)`` run by the actor (its return value is the reply, an
        exception it raises the error), or by the outcome itself when ``then`` is ``None``. An
        idle actor completes the outcome at once in the child's task, like an immediate message
        (the same order, the same single writer); otherwise its loop does, and an awaitable that
        ``then`` returns is always awaited in the loop. If the caller abandons the request, the
        child task is cancelled and ``then`` still runs (in the loop) with a cancelled outcome, so
        the actor can release what it reserved.

        Work for an ask that an idle actor handles at once (:meth:`Actor.handle_now`) runs in the
        asking task itself rather than a child task (the first such work of that ask): the asker
        only waits for it, so it is the same work with one task fewer. It is cancelled like a
        child: by the caller giving up, or by the instance ending.
        """
        scope = anyio.CancelScope()
        if reply_to is not None:
            reply_to._bind(scope)
            self._cell.in_flight.add(reply_to)
            if reply_to is self.asker_waits and reply_to.inline is None:
                reply_to.inline = _Inline(scope, work, args, then, self._generation)
                return
        self._task_group.start_soon(self._cell.run_child, scope, reply_to, work, args, then,
                                    self._generation)

    def __repr__(self) -> str:
        return f"<ActorContext {self._cell.name} [generation {self._generation}]>"
