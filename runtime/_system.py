"""The actor system: a supervision tree running inside an anyio task group."""

from __future__ import annotations

import logging
import random
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from runtime._actor import ActorStatus
from runtime._clock import Clock, MonotonicClock
from runtime._errors import RestartIntensityExceeded, SystemFailure
from runtime._ref import ActorRef
from runtime._supervisor import ChildSpec, Registry, Supervisor, SupervisorSpec

__all__ = ["ActorSystem"]

logger = logging.getLogger("runtime")


class ActorSystem:
    """Runs a supervision tree: ``async with ActorSystem(spec) as system: ...``.

    Entering starts every actor in order and returns once all are ready. Leaving stops them
    gracefully in reverse order (queued requests are drained within each child's shutdown
    timeout; what is left fails with :class:`ActorStopped`). If the root supervisor escalates,
    the body is cancelled and leaving raises :class:`SystemFailure`.
    """

    def __init__(
        self, root: SupervisorSpec, *, clock: Clock | None = None, seed: int | None = None
    ) -> None:
        self._registry = Registry(clock or MonotonicClock(), random.Random(seed))
        self._root = Supervisor(root, self._registry)
        self._task_group: TaskGroup | None = None
        self._failure: SystemFailure | None = None
        self._stopped = False

    @property
    def clock(self) -> Clock:
        return self._registry.clock

    @property
    def failure(self) -> SystemFailure | None:
        """Why the system stopped on its own, if it did."""
        return self._failure

    def ref(self, name: str) -> ActorRef:
        """The ref of the actor called ``name``. Raises :class:`KeyError`."""
        return self._registry.cells[name].ref

    def durable(self, name: str) -> Any:
        """The durable state of actor ``name``, for reading (health, metrics); never mutate it."""
        return self._registry.cells[name].durable

    def actor_status(self, name: str) -> ActorStatus | None:
        """State, restarts and mailbox of one actor (``None`` if there is none by that name)."""
        return self._registry.actor_status(name)

    def status(self) -> dict[str, ActorStatus]:
        """State, restart count and mailbox depth of every actor, by name."""
        return self._registry.status()

    def children(self, supervisor: str) -> list[str]:
        """The names of ``supervisor``'s children, in start order. Raises :class:`KeyError`."""
        return self._registry.children(supervisor)

    async def spawn(self, spec: ChildSpec, *, under: str | None = None) -> ActorRef:
        """Start an actor at run time under supervisor ``under`` (default: the root)."""
        supervisor = self._registry.supervisors[under or self._root.name]
        ref = await supervisor.start_child(spec)
        assert ref is not None
        return ref

    async def stop_actor(self, name: str, *, under: str | None = None) -> None:
        """Stop a child gracefully and remove it from its supervisor."""
        await self._registry.supervisors[under or self._root.name].stop_child(name)

    async def __aenter__(self) -> ActorSystem:
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            await task_group.start(self._run_root)
        except BaseException as exc:
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if self._failure is not None:
            await task_group.__aexit__(None, None, None)
            raise self._failure
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        if self._failure is None:
            with anyio.CancelScope(shield=True):
                await self.stop()
        suppress = await self._task_group.__aexit__(exc_type, exc, traceback)
        self._close_all("actor system stopped")
        if self._failure is not None:
            raise self._failure
        return suppress

    async def stop(self) -> None:
        """Stop every actor gracefully, in reverse start order."""
        if self._stopped:
            return
        self._stopped = True
        await self._root.stop()

    async def _run_root(self, *, task_status: TaskStatus[None]) -> None:
        started = False

        def ready() -> None:
            nonlocal started
            started = True
            task_status.started()

        try:
            await self._root.run(ready)
        except RestartIntensityExceeded as exc:
            self._failure = SystemFailure(exc)
            self._failure.__cause__ = exc
            logger.error("%s", self._failure)
            self._close_all(str(self._failure))
            assert self._task_group is not None
            self._task_group.cancel_scope.cancel()
        finally:
            if not started:
                task_status.started()

    def _close_all(self, reason: str) -> None:
        for cell in list(self._registry.cells.values()):
            cell.close(reason)

    def __repr__(self) -> str:
        states: dict[str, int] = {}
        for status in self.status().values():
            states[status.state.value] = states.get(status.state.value, 0) + 1
        summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        return f"<ActorSystem {self._root.name} [{summary or 'empty'}]>"


