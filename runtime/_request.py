"""Requests: one message in a mailbox, and the way its answer travels back.

A :class:`Request` is answered at most once, by whoever comes first: the actor (a reply or an
error), or the caller giving up (deadline, cancellation). Everything after the first ending is
ignored, which is what makes "every request ends exactly once" a local property.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Generic, TypeVar

import anyio

from runtime._queue import Queue

__all__ = ["Ask", "AskStream", "Delegated", "Outcome", "Request", "RequestKind"]

R_co = TypeVar("R_co", covariant=True)
T_co = TypeVar("T_co", covariant=True)


class Ask(Generic[R_co]):
    """Base of a message answered by one reply of type ``R_co``.

    ``class Reserve(Ask[Reservation])`` makes ``await ref.ask(Reserve(...))`` a ``Reservation``
    for the type checker. A marker only: nothing is checked at run time, and it costs nothing.
    """

    __slots__ = ()


class AskStream(Generic[T_co]):
    """Base of a message answered by a stream of ``T_co`` items (see ``ActorRef.ask_stream``)."""

    __slots__ = ()


class RequestKind(Enum):
    """How the sender waits for the answer."""

    TELL = "tell"
    ASK = "ask"
    STREAM = "stream"


class Outcome:
    """The result of a piece of work: a value, an error, or cancellation."""

    __slots__ = ("cancelled", "error", "value")

    def __init__(
        self, value: Any = None, error: Exception | None = None, cancelled: bool = False
    ) -> None:
        self.value = value
        self.error = error
        self.cancelled = cancelled

    def unwrap(self) -> Any:
        """Return the value or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value

    def __repr__(self) -> str:
        if self.cancelled:
            return "<Outcome cancelled>"
        if self.error is not None:
            return f"<Outcome error={type(self.error).__name__}>"
        return "<Outcome value>"


class Request:
    """One message on its way through an actor, with its reply channel and deadline.

    ``deadline`` is on anyio's clock (:func:`anyio.current_time`), ``math.inf`` when there is none.
    Not thread-safe: used from the event loop only.
    """

    __slots__ = (
        "_channel",
        "_error",
        "_event",
        "_on_end",
        "_scope",
        "_value",
        "abandoned",
        "deadline",
        "delegations",
        "done",
        "inline",
        "kind",
        "message",
    )

    def __init__(
        self,
        message: Any,
        kind: RequestKind = RequestKind.TELL,
        deadline: float = math.inf,
        stream_buffer: int = 0,
    ) -> None:
        self.message = message
        self.kind = kind
        self.deadline = deadline
        self.done = False
        self.abandoned = False
        self.delegations = 0
        self.inline: Any = None
        """Piped work the asking task runs itself (see ``ActorContext.pipe``), until it starts."""
        self._scope: anyio.CancelScope | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._on_end: Callable[[Request], None] | None = None
        self._event: anyio.Event | None = None  # made by wait(), when it has to wait
        self._channel: Queue[Any] | None = None
        if kind is RequestKind.STREAM:
            self._channel = Queue(stream_buffer)

    # -- the actor's side ---------------------------------------------------------------------

    def reply(self, value: Any = None) -> None:
        """Answer with ``value`` (for a stream: end it normally). Ignored if already ended."""
        if self.done:
            return
        self.done = True
        self._value = value
        self._finish()

    def fail(self, error: BaseException) -> None:
        """Answer with ``error``, re-raised in the caller. Ignored if already ended."""
        if self.done:
            return
        self.done = True
        self._error = error
        self._finish()

    async def send(self, item: Any) -> None:
        """Send one item of a streamed answer; waits while the consumer's buffer is full.

        Raises :class:`anyio.BrokenResourceError` if the consumer went away.
        """
        if self._channel is None:
            raise TypeError("send() is only for requests made with ask_stream()")
        if self.done:
            raise anyio.BrokenResourceError
        await self._channel.send(item)

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.deadline != math.inf and anyio.current_time() >= self.deadline

    def _finish(self) -> None:
        if self._event is not None:
            self._event.set()
        elif self._channel is not None:
            self._channel.close()
        if self._on_end is not None:
            self._on_end(self)

    # -- the caller's side --------------------------------------------------------------------

    def abandon(self) -> None:
        """The caller gives up: no answer will be delivered, the work on it is cancelled."""
        if self._scope is not None:
            self._scope.cancel()
        if self.done:
            return
        self.done = True
        self.abandoned = True
        if self._channel is not None:
            self._channel.close()
        if self._on_end is not None:
            self._on_end(self)

    async def wait(self) -> Any:
        """Wait for the single answer of an ask; return it or raise its error."""
        if not self.done:
            self._event = event = anyio.Event()
            await event.wait()
        return self.result()

    def result(self) -> Any:
        """The answer of an ended ask: the value, or its error raised."""
        if self._error is not None:
            raise self._error
        return self._value

    def _bind(self, scope: anyio.CancelScope) -> None:
        self.delegations += 1
        self._scope = scope

    def __repr__(self) -> str:
        state = "abandoned" if self.abandoned else "done" if self.done else "pending"
        return f"<Request {self.kind.value} {type(self.message).__name__} {state}>"


class Delegated:
    """What an immediate handler's ask returns when the handler delegated its answer to a child
    task: the request, whose answer the sender then waits for."""

    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request


Then = Callable[[Outcome], Any | Awaitable[Any]]
