"""Supervision trees with OTP semantics.

A :class:`Supervisor` starts its children in order, restarts them when they end according to
their restart type and its strategy, spaces restarts with exponential backoff and jitter, and gives
up (escalates to its parent) when a child needs more than ``max_restarts`` restarts within
``max_seconds``. It stops its children in reverse order, each within its shutdown timeout.

Cells (mailboxes) are created once per name and reused by every supervisor instance, so a
supervisor restarted by its parent serves the same queued messages through the same refs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from runtime._actor import Actor, ActorState, ActorStatus, Restart, unwrap_group
from runtime._cell import ActorCell
from runtime._clock import Clock
from runtime._errors import RestartIntensityExceeded
from runtime._ref import ActorRef

__all__ = ["Backoff", "ChildSpec", "Restart", "Strategy", "Supervisor", "SupervisorSpec"]

logger = logging.getLogger("runtime")


class Strategy(Enum):
    """Which children restart when one of them ends abnormally."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that ended."""
    ONE_FOR_ALL = "one_for_all"
    """All children: the others are stopped (in reverse order) and all restart in order."""
    REST_FOR_ONE = "rest_for_one"
    """The child that ended and those started after it."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between restarts of one child.

    The n-th consecutive restart waits ``min(maximum, initial * multiplier**(n-1))`` scaled by a
    random factor in ``[1 - jitter, 1 + jitter]``. The count resets once the child has run for
    ``reset_after`` seconds without crashing.
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before restart number ``attempt`` (1-based)."""
        try:
            base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        except OverflowError:  # the 1025th restart of a loop never quiet for reset_after
            base = self.maximum
        return base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))


@dataclass(frozen=True)
class ChildSpec:
    """How to run and restart one actor.

    ``crash_on`` lists the exception classes that crash the instance when a handler raises them
    (the caller gets the error either way); anything else is only an error answer.
    ``durable`` builds state once, kept across restarts (``context.durable``).
    """

    name: str
    factory: Callable[[], Actor[Any]]
    restart: Restart = Restart.PERMANENT
    crash_on: tuple[type[BaseException], ...] = (Exception,)
    mailbox_size: int = 1000
    shutdown_timeout: float = 5.0
    durable: Callable[[], Any] | None = None


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor and its children, started in the order given."""

    name: str
    children: Sequence[ChildSpec | SupervisorSpec] = field(default_factory=tuple)
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    max_seconds: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 10.0


class Registry:
    """The cells and live supervisors of one system, by name."""

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self.cells: dict[str, ActorCell] = {}
        self.supervisors: dict[str, Supervisor] = {}

    def cell(self, spec: ChildSpec) -> ActorCell:
        cell = self.cells.get(spec.name)
        if cell is None:
            cell = self.cells[spec.name] = ActorCell(spec, self)
        return cell

    def actor_status(self, name: str) -> ActorStatus | None:
        cell = self.cells.get(name)
        return cell.status() if cell is not None else None

    def status(self) -> dict[str, ActorStatus]:
        return {name: cell.status() for name, cell in self.cells.items()}

    def children(self, supervisor: str) -> list[str]:
        return [child.name for child in self.supervisors[supervisor].children]


class _Child:
    """A supervisor's bookkeeping for one child, across its restarts."""

    def __init__(self, spec: ChildSpec | SupervisorSpec, registry: Registry) -> None:
        self.spec = spec
        self.cell = registry.cell(spec) if isinstance(spec, ChildSpec) else None
        self.generation = 0
        self.running = False
        self.expected_exit = False
        self.failures = 0
        self.started_at = 0.0
        self.scope: anyio.CancelScope | None = None
        self.exited = anyio.Event()
        self.pending_restart: anyio.CancelScope | None = None
        self.supervisor: Supervisor | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def mark(self, state: ActorState) -> None:
        if self.cell is not None:
            self.cell.state = state


class Supervisor:
    """The live instance of a :class:`SupervisorSpec`."""

    def __init__(self, spec: SupervisorSpec, registry: Registry) -> None:
        names = [child.name for child in spec.children]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {spec.name!r}: child names must be unique: {names}")
        self.spec = spec
        self._registry = registry
        self.children = [_Child(child, registry) for child in spec.children]
        self._restarts: list[float] = []
        self._stopping = False
        self._task_group: TaskGroup | None = None
        self._events_send, self._events = anyio.create_memory_object_stream[
            tuple[_Child, int, Exception | None]
        ](math.inf)

    @property
    def name(self) -> str:
        return self.spec.name

    async def run(self, on_ready: Callable[[], None]) -> None:
        """Start the children in order, call ``on_ready``, supervise until stopped.

        Raises :class:`RestartIntensityExceeded` to escalate.
        """
        self._registry.supervisors[self.name] = self
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                for child in self.children:
                    await self._start(child)
                on_ready()
                async with self._events:
                    async for child, generation, error in self._events:
                        if generation != child.generation or child.expected_exit:
                            continue
                        await self._on_exit(child, error)
                task_group.cancel_scope.cancel()
        except Exception as exc:
            raise unwrap_group(exc) from None
        finally:
            self._task_group = None
            self._events_send.close()
            self._events.close()

    async def start_child(self, spec: ChildSpec | SupervisorSpec) -> ActorRef | None:
        """Add a child at run time and start it; returns its ref (``None`` for a supervisor)."""
        if any(child.name == spec.name for child in self.children):
            raise ValueError(f"supervisor {self.name!r} already has a child {spec.name!r}")
        if isinstance(spec, ChildSpec) and spec.name in self._registry.cells:
            raise ValueError(f"an actor named {spec.name!r} already exists")
        child = _Child(spec, self._registry)
        self.children.append(child)
        await self._start(child)
        return child.cell.ref if child.cell is not None else None

    async def stop_child(self, name: str) -> None:
        """Stop a child gracefully and forget it."""
        for child in self.children:
            if child.name == name:
                await self._shutdown(child)
                self._forget(child)
                return
        raise KeyError(name)

    async def stop(self) -> None:
        """Stop all children gracefully, in reverse order, then end :meth:`run`."""
        if self._stopping:
            return
        self._stopping = True
        for child in self.children:
            if child.pending_restart is not None:
                child.pending_restart.cancel()
        for child in reversed(self.children):
            await self._shutdown(child)
        self._events_send.close()

    # -- running children -----------------------------------------------------------------------

    async def _start(self, child: _Child) -> None:
        assert self._task_group is not None
        child.generation += 1
        child.expected_exit = False
        child.running = True
        child.exited = anyio.Event()
        child.started_at = self._registry.clock.now()
        child.mark(ActorState.STARTING)
        await self._task_group.start(self._run_child, child, child.generation)

    async def _run_child(
        self, child: _Child, generation: int, *, task_status: TaskStatus[None]
    ) -> None:
        started = False

        def ready() -> None:
            nonlocal started
            started = True
            task_status.started()

        error: Exception | None = None
        try:
            with anyio.CancelScope() as child.scope:
                try:
                    if child.cell is not None:
                        await child.cell.run_instance(ready)
                    else:
                        assert isinstance(child.spec, SupervisorSpec)
                        child.supervisor = Supervisor(child.spec, self._registry)
                        await child.supervisor.run(ready)
                except Exception as exc:
                    error = unwrap_group(exc)
        finally:
            # Also when this task is cancelled from outside (say, the caller of start_child gave
            # up while the child was starting): the supervisor must hear of every exit, or it
            # keeps a cell that no instance serves and asks to it wait forever.
            child.running = False
            child.exited.set()
            if not started:
                task_status.started()
            if error is not None and not child.expected_exit:
                logger.warning("%s %r ended with %s: %s", "supervisor" if child.cell is None
                               else "actor", child.name, type(error).__name__, error)
            # The supervisor has ended (stopped, or cancelled from outside).
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._events_send.send_nowait((child, generation, error))

    async def _on_exit(self, child: _Child, error: Exception | None) -> None:
        if self._stopping:
            return
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and error is None):
            self._forget(child)
            return
        clock = self._registry.clock
        now = clock.now()
        self._restarts = [t for t in self._restarts if now - t < self.spec.max_seconds]
        self._restarts.append(now)
        if len(self._restarts) > self.spec.max_restarts:
            raise RestartIntensityExceeded(
                self.name, child.name, self.spec.max_restarts, self.spec.max_seconds
            ) from error
        if now - child.started_at >= self.spec.backoff.reset_after:
            child.failures = 0
        child.failures += 1
        group = self._restart_group(child)
        # A restart pending for some of them is replaced by this one, which must then restart
        # everyone that one would have (say, rest_for_one after a crash of a later child).
        replaced = {member.pending_restart for member in group} - {None}
        group = [c for c in self.children if c in group or c.pending_restart in replaced]
        for other in reversed(group):
            if other is not child:
                await self._terminate(other)
        # Pending from now on, not from when the task first runs: an exit handled before then
        # must see (and replace) this restart.
        scope = anyio.CancelScope()
        for member in group:
            if member.pending_restart is not None:
                member.pending_restart.cancel()
            member.pending_restart = scope
            member.mark(ActorState.RESTARTING)
            if member.cell is not None:
                member.cell.restart_count += 1
        delay = self.spec.backoff.delay(child.failures, self._registry.rng)
        assert self._task_group is not None
        self._task_group.start_soon(self._restart_later, group, delay, scope)

    def _restart_group(self, child: _Child) -> list[_Child]:
        strategy = self.spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [child]
        if strategy is Strategy.ONE_FOR_ALL:
            return list(self.children)
        return self.children[self.children.index(child):]

    async def _restart_later(
        self, group: list[_Child], delay: float, scope: anyio.CancelScope
    ) -> None:
        with scope:
            await self._registry.clock.sleep(delay)
            for member in group:
                if member.pending_restart is scope:
                    member.pending_restart = None
                if not member.running and not self._stopping:
                    await self._start(member)

    async def _terminate(self, child: _Child) -> None:
        """Cancel a running child now, for a restart (its mailbox keeps its queue)."""
        if not child.running:
            return
        child.expected_exit = True
        if child.scope is not None:
            child.scope.cancel()
        with anyio.move_on_after(child.spec.shutdown_timeout):
            await child.exited.wait()

    async def _shutdown(self, child: _Child) -> None:
        """Stop a child gracefully: drain, then cancel after its shutdown timeout."""
        if child.pending_restart is not None:
            child.pending_restart.cancel()
        if child.running:
            child.expected_exit = True
            if child.cell is not None:
                child.cell.begin_shutdown()
            elif child.supervisor is not None:
                with anyio.move_on_after(child.spec.shutdown_timeout):
                    await child.supervisor.stop()
            with anyio.move_on_after(child.spec.shutdown_timeout):
                await child.exited.wait()
            if child.running and child.scope is not None:
                child.scope.cancel()
                await child.exited.wait()
        if child.cell is not None:
            child.cell.close()

    def _forget(self, child: _Child) -> None:
        if child.cell is not None:
            child.cell.close()
        if child in self.children:
            self.children.remove(child)
        self._registry.cells.pop(child.name, None)

    def __repr__(self) -> str:
        running = sum(child.running for child in self.children)
        return (
            f"<Supervisor {self.name} [{self.spec.strategy.value} | {running}/"
            f"{len(self.children)} running | {len(self._restarts)} recent restarts]>"
        )
