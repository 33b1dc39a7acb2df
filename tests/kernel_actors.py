"""Small actors used by the kernel tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never

import anyio

from runtime import Actor, Ask, AskStream, Outcome, Request


class Boom(Exception):
    """A failure that crashes the actor."""


class Refused(Exception):
    """A failure that is only an answer."""


@dataclass(frozen=True)
class Slow(Ask[Any]):
    """Answer after ``seconds`` of child work (pipe to self)."""

    seconds: float
    value: Any = None


@dataclass(frozen=True)
class Crash(Ask[None]):
    """Raise Boom in the handler."""


@dataclass(frozen=True)
class Refuse(Ask[None]):
    """Raise Refused in the handler."""


@dataclass(frozen=True)
class Count(AskStream[int]):
    """Stream n integers."""

    n: int


Plain = str | int
"""Echoed and recorded, except ``"block"`` (waits for ``blocker``) and ``"state"`` (the count)."""

RecorderMessage = Slow | Crash | Refuse | Count | Plain


class Recorder(Actor[RecorderMessage]):
    """Echoes asks, records tells, and knows a few tricks (see the message classes)."""

    def __init__(self, log: list[Any] | None = None, events: list[str] | None = None) -> None:
        self.log = log if log is not None else []
        self.events = events
        self.state = 0
        self.cancelled: list[Any] = []
        self.blocker = anyio.Event()

    async def on_start(self) -> None:
        if self.events is not None:
            self.events.append(f"start {self.context.name}")

    async def on_stop(self) -> None:
        if self.events is not None:
            self.events.append(f"stop {self.context.name}")

    async def receive(self, message: RecorderMessage) -> Any:
        match message:
            case Slow():
                self.context.pipe(self._sleep, message, reply_to=self.context.request,
                                  then=self._slept)
                return None
            case Crash():
                raise Boom("boom")
            case Refuse():
                raise Refused("no")
            case Count(n):
                request = self.context.request
                assert request is not None
                self.context.pipe(self._count, request, n, reply_to=request)
                return None
            case "block":
                await self.blocker.wait()
                return "unblocked"
            case "state":
                return self.state
            case str() | int():
                self.state += 1
                self.log.append(message)
                return message
            case _:
                assert_never(message)

    async def _sleep(self, message: Slow) -> Any:
        await anyio.sleep(message.seconds)
        return message.value

    def _slept(self, outcome: Outcome) -> Any:
        if outcome.cancelled:
            self.cancelled.append("slow")
        self.state += 1
        return outcome.unwrap()

    async def _count(self, request: Request, n: int) -> None:
        for i in range(n):
            await request.send(i)
