"""Clocks: the one source of time for everything whose behaviour depends on it.

Production code uses :class:`MonotonicClock`; tests use :class:`FakeClock` and step time with
:meth:`FakeClock.advance` instead of sleeping, so time-based behaviour (backoff, breakers, rate
windows) is asserted deterministically.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "FakeClock", "MonotonicClock"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic clock that can also sleep."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences are meaningful)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of this clock's time."""
        ...


class MonotonicClock:
    """The real clock: :func:`time.monotonic` and :func:`anyio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "<MonotonicClock>"


class FakeClock:
    """A clock that only moves when told to.

    ``sleep`` parks the caller until :meth:`advance` moves the time past its deadline.
    ``advance`` wakes the sleepers whose deadline has passed, in deadline order, and yields so that
    they run before it returns.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), event))
        await event.wait()

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in :meth:`sleep` (waiting or cancelled, not yet woken)."""
        return len(self._sleepers)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and let the woken sleepers run."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, event = heapq.heappop(self._sleepers)
            event.set()
        # Several rounds so that chains of wake-ups (a woken task that schedules more work) settle.
        for _ in range(10):
            await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.3f} sleepers={len(self._sleepers)}>"
