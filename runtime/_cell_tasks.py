"""The bodies of an actor cell's tasks: a piped child, piped work run by its asker, a timer.

:class:`CellTasks` is a base of :class:`~runtime._cell.ActorCell` (moved out of it verbatim for
size); they complete an outcome through the cell (``_complete_now``, else its mailbox).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from runtime._cell_items import _ChildDone
from runtime._queue import Queue
from runtime._request import Outcome, Request, Then

if TYPE_CHECKING:
    from runtime._supervisor import Registry

__all__ = ["CellTasks"]


class CellTasks:
    """Runs a cell's child tasks, inline work and timers (see :class:`~runtime._cell.ActorCell`)."""

    registry: Registry
    _mailbox: Queue[Any]
    _accepting: bool
    _depth: int

    def _complete_now(self, done: _ChildDone) -> bool:
        raise NotImplementedError  # the cell's

    async def run_child(
        self,
        scope: anyio.CancelScope,
        request: Request | None,
        work: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        then: Then | None,
        generation: int,
    ) -> None:
        outcome: Outcome | None = None
        with scope:
            try:
                outcome = Outcome(await work(*args))
            except Exception as exc:
                outcome = Outcome(error=exc)
        if outcome is None:
            outcome = Outcome(cancelled=True)
        done = _ChildDone(request, outcome, then, generation)
        if not self._complete_now(done):
            self._mailbox.put(done)

    async def run_inline(self, request: Request) -> None:
        """Run the work piped for ``request`` in the asking task, like :meth:`run_child`; also
        when the asker is cancelled (its deadline), the outcome (then cancelled) completes."""
        inline, request.inline = request.inline, None
        outcome: Outcome | None = None
        try:
            with inline.scope:
                try:
                    outcome = Outcome(await inline.work(*inline.args))
                except Exception as exc:
                    outcome = Outcome(error=exc)
        finally:
            done = _ChildDone(request, outcome or Outcome(cancelled=True), inline.then,
                              inline.generation)
            if not self._complete_now(done) and not self._mailbox.broken:
                self._mailbox.put(done)

    async def run_timer(
        self, scope: anyio.CancelScope, interval: float, message: object, repeat: bool
    ) -> None:
        tick: Request | None = None
        with scope:
            while True:
                await self.registry.clock.sleep(interval)
                if not self._accepting:
                    return
                if tick is None or tick.done:
                    # Past the bound, like a child's outcome: the actor asked for this message.
                    tick = Request(message)
                    self._depth += 1
                    self._mailbox.put(tick)
                if not repeat:
                    return
