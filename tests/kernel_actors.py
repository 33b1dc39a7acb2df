"""Small actors used by the kernel tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from runtime import Actor, Outcome


class Boom(Exception):
    """A failure that crashes the actor."""


class Refused(Exception):
    """A failure that is only an answer."""


@dataclass(frozen=True)
class Slow:
    """Answer after ``seconds`` of child work (pipe to self)."""

    seconds: float
    value: Any = None


@dataclass(frozen=True)
class Crash:
    """Raise Boom in the handler."""


@dataclass(frozen=True)
class Refuse:
    """Raise Refused in the handler."""


@dataclass(frozen=True)
class Count:
    """Stream n integers."""

    n: int


class Recorder(Actor):
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

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Slow):
            self.context.pipe(self._sleep, message, then=self._slept)
            return None
        if isinstance(message, Crash):
            raise Boom("boom")
        if isinstance(message, Refuse):
            raise Refused("no")
        if isinstance(message, Count):
            request = self.context.request
            assert request is not None
            self.context.pipe(self._count, request, message.n)
            return None
        if message == "block":
            await self.blocker.wait()
            return "unblocked"
        if message == "state":
            return self.state
        self.state += 1
        self.log.append(message)
        return message

    async def _sleep(self, message: Slow) -> Any:
        await anyio.sleep(message.seconds)
        return message.value

    def _slept(self, outcome: Outcome) -> Any:
        if outcome.cancelled:
            self.cancelled.append("slow")
        self.state += 1
        return outcome.unwrap()

    async def _count(self, request: Any, n: int) -> None:
        for i in range(n):
            await request.send(i)
