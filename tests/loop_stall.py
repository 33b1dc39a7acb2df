"""How long the event loop is held while some work runs: a 5 ms ticker's longest gap."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")

_MAX_TICKS = 200_000  # 1000 s of 5 ms ticks: the work ends long before; bounded all the same


async def longest_stall(work: Awaitable[T]) -> tuple[T, float]:
    """``work``'s result and the longest the event loop went without running the ticker
    meanwhile (seconds)."""
    longest = 0.0

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        for _ in range(_MAX_TICKS):
            await anyio.sleep(0.005)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        result = await work
        group.cancel_scope.cancel()
    return result, longest
