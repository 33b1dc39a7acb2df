"""What an actor cell's loop receives besides requests: a child's outcome, an awaitable to
resume, a crash to raise, the stop marker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from runtime._request import Outcome, Request, Then

__all__ = ["_STOP", "_ChildDone", "_Crash", "_Inline", "_Resume"]

_STOP = object()


class _ChildDone:
    __slots__ = ("generation", "outcome", "request", "then")

    def __init__(
        self, request: Request | None, outcome: Outcome, then: Then | None, generation: int
    ) -> None:
        self.request = request
        self.outcome = outcome
        self.then = then
        self.generation = generation


class _Resume:
    """The awaitable a ``then`` returned when it ran in its child's task: awaited by the loop
    of the same instance (its request stays in flight until then)."""

    __slots__ = ("awaitable", "delegations", "generation", "request")

    def __init__(self, request: Request | None, awaitable: Awaitable[Any], delegations: int,
                 generation: int) -> None:
        self.request = request
        self.awaitable = awaitable
        self.delegations = delegations
        self.generation = generation

    def drop(self) -> None:
        """Never to be awaited (its instance ended, which answered the request): closed."""
        close = getattr(self.awaitable, "close", None)
        if close is not None:
            close()


class _Crash:
    """Queued by an immediate handler whose error matches ``crash_on``: the loop raises it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Inline:
    """Work piped for the ask an immediate handler is answering: run by the asking task itself
    (:meth:`ActorCell.run_inline`) instead of a child task, as the asker only waits for it."""

    __slots__ = ("args", "generation", "scope", "then", "work")

    def __init__(self, scope: anyio.CancelScope, work: Callable[..., Awaitable[Any]],
                 args: tuple[Any, ...], then: Then | None, generation: int) -> None:
        self.scope = scope
        self.work = work
        self.args = args
        self.then = then
        self.generation = generation
