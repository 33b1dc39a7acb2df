"""ActorRef: the address of an actor, and the three ways to talk to it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import anyio

from runtime._errors import ActorStopped, DeadlineExceeded, Overloaded
from runtime._request import Ask, AskStream, Delegated, Request, RequestKind

if TYPE_CHECKING:
    from runtime._cell import ActorCell

__all__ = ["ActorRef"]

R = TypeVar("R")
T = TypeVar("T")


class ActorRef:
    """The address of an actor: the only way to talk to it. Valid across restarts."""

    __slots__ = ("_cell",)

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        return self._cell.name

    def tell(self, message: object) -> None:
        """Send without waiting for an answer.

        Raises :class:`Overloaded` if the mailbox is full, :class:`ActorStopped` if it is closed.
        """
        cell = self._cell
        if cell.can_handle_now(message):
            cell.handle_now(message, math.inf, tell=True)
        else:
            cell.enqueue(Request(message))

    def try_tell(self, message: object) -> bool:
        """Like :meth:`tell`, but a full or closed mailbox drops the message (counted) instead."""
        cell = self._cell
        try:
            if cell.can_handle_now(message):
                cell.handle_now(message, math.inf, tell=True)
            else:
                cell.enqueue(Request(message))
        except (Overloaded, ActorStopped):
            self._cell.dropped += 1
            return False
        return True

    async def ask(
        self, message: Ask[R], timeout: float | None = None, *, deadline: float | None = None
    ) -> R:
        """Send ``message`` and wait for the one answer, of the type the message declares.

        ``timeout`` (seconds) or ``deadline`` (on anyio's clock) bound the wait and travel with
        the message, so the actor skips it if it expires in the queue. Raises the actor's error,
        :class:`Overloaded`, :class:`ActorStopped`, :class:`ActorCrashed` or
        :class:`DeadlineExceeded`. Cancelling the caller cancels the work done for it.
        """
        limit = _deadline(timeout, deadline)
        cell = self._cell
        if cell.can_handle_now(message):
            answer = cell.handle_now(message, limit, tell=False)
            if type(answer) is not Delegated:
                immediate: R = answer
                return immediate
            request: Request = answer.request
        else:
            request = Request(message, RequestKind.ASK, limit)
            cell.enqueue(request)
        reply: R
        try:
            if limit == math.inf:
                if request.inline is not None:
                    await cell.run_inline(request)  # the work piped for it, in this task
                reply = await request.wait()
                return reply
            # A bare scope rather than fail_after (a generator context manager that reads the
            # clock twice more): only its own deadline can cancel it, so a caught cancellation
            # is the deadline.
            with anyio.CancelScope(deadline=limit):
                if request.inline is not None:
                    await cell.run_inline(request)
                reply = await request.wait()
                return reply
        except BaseException:
            request.abandon()
            raise
        if request.done and not request.abandoned:
            reply = request.result()
            return reply
        request.abandon()
        raise DeadlineExceeded(self._cell.name)

    @asynccontextmanager
    async def ask_stream(
        self,
        message: AskStream[T],
        timeout: float | None = None,
        *,
        deadline: float | None = None,
        buffer: int = 16,
    ) -> AsyncIterator[AsyncIterator[T]]:
        """Send ``message`` and iterate over a bounded stream of answers.

        ``async with ref.ask_stream(msg) as items: async for item in items: ...``. A slow
        consumer slows the producer (the buffer holds ``buffer`` items). Leaving the block early
        abandons the request and cancels the work producing it. Errors are raised from the
        iteration, after the items sent before them.
        """
        limit = _deadline(timeout, deadline)
        request = Request(message, RequestKind.STREAM, limit, stream_buffer=buffer)
        try:
            self._cell.enqueue(request)
            items: _Items[T] = _Items(request, self._cell.name)
            yield items
        finally:
            request.abandon()
            assert request._channel is not None
            request._channel.break_()

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)


class _Items(AsyncIterator[T]):
    """The items of a streamed answer. A plain iterator rather than an async generator: one
    abandoned half-way needs no finalizer (trio warns about async generators left to the GC)."""

    __slots__ = ("_actor", "_request")

    def __init__(self, request: Request, actor: str) -> None:
        self._request = request
        self._actor = actor

    async def __anext__(self) -> T:
        request = self._request
        channel = request._channel
        assert channel is not None
        deadline = request.deadline
        item: T
        try:
            if deadline == math.inf:
                item = await channel.get()
            elif channel.ready:
                # Buffered (or ended): no cancel scope, but the deadline still wins.
                if anyio.current_time() >= deadline:
                    raise TimeoutError
                item = channel.get_nowait()
            else:
                with anyio.CancelScope(deadline=deadline) as scope:
                    item = await channel.get()
                if scope.cancelled_caught:
                    raise TimeoutError
        except anyio.EndOfStream:
            if request._error is not None:
                raise request._error from None
            raise StopAsyncIteration from None
        except TimeoutError:
            request.abandon()
            raise DeadlineExceeded(self._actor) from None
        return item


def _deadline(timeout: float | None, deadline: float | None) -> float:
    limit = math.inf if deadline is None else deadline
    if timeout is not None:
        limit = min(limit, anyio.current_time() + timeout)
    return limit
