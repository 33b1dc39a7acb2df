"""What tests of code built on the kernel need: a clock that moves only when told to.

``from runtime.testing import FakeClock``; pass it as ``ActorSystem(spec, clock=clock)`` (or to
anything that takes a :class:`runtime.Clock`) and step it with ``await clock.advance(seconds)``.
"""

from __future__ import annotations

import heapq
import itertools

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that only moves when told to.

    ``sleep`` parks the caller until :meth:`advance` moves the time past its deadline.
    ``advance`` wakes the sleepers whose deadline has passed, in deadline order, and returns once
    every other task waits again (so it never returns while another task spins on checkpoints).
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
        # Until every other task waits again, so that chains of wake-ups (a woken task that
        # schedules more work) settle whatever the backend's scheduling order (trio shuffles).
        await anyio.wait_all_tasks_blocked()

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.3f} sleepers={len(self._sleepers)}>"
