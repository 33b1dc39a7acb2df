"""Hedged requests: when the first candidate is slower than usual, ask the next one too.

A hedge goes to the next candidate on another provider, after the primary's p95 latency (at least
``hedging.min_delay``) measured over its last answers, for at most ``hedging.max_share`` of the
requests. The first answer wins; the other attempt is cancelled (and pays for what it sent, like
any cancelled attempt). The delay is waited on the runtime's clock, so tests step it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from runtime import Clock

from ._candidates import Candidate
from ._config import HedgingConfig
from ._errors import LLMClientError

__all__ = ["HedgePolicy", "race"]

T = TypeVar("T")

#: Latencies kept per provider, and how many are needed before its p95 means anything.
_SAMPLES = 200
_MIN_SAMPLES = 20


class HedgePolicy:
    """Latency samples and hedge counts of one router; changed only in the router's own loop."""

    def __init__(self, config: HedgingConfig) -> None:
        self._config = config
        self._latencies: dict[str, deque[float]] = {}
        self.requests = 0
        self.hedges = 0

    def record_latency(self, provider: str, seconds: float) -> None:
        self._latencies.setdefault(provider, deque(maxlen=_SAMPLES)).append(seconds)

    def partner(self, candidates: Sequence[Candidate], index: int) -> Candidate | None:
        """The candidate to hedge ``candidates[index]`` with, if hedging applies now: the next
        one on another provider (a slow provider is as slow with its next model)."""
        if not self._config.enabled:
            return None
        if self.hedges >= self._config.max_share * max(1, self.requests):
            return None
        primary = candidates[index].provider
        return next((c for c in candidates[index + 1:] if c.provider != primary), None)

    def delay(self, provider: str) -> float:
        """Seconds to wait for ``provider`` before hedging (``inf`` without enough samples)."""
        samples = sorted(self._latencies.get(provider, ()))
        if len(samples) < _MIN_SAMPLES:
            return math.inf
        p95 = samples[min(len(samples) - 1, int(0.95 * len(samples)))]
        return max(self._config.min_delay, p95)


async def race(
    primary: Callable[[], Awaitable[T]],
    hedge: Callable[[], Awaitable[T]],
    delay: float,
    clock: Clock,
) -> T:
    """Run ``primary``; if it has not finished after ``delay`` (on ``clock``), run ``hedge`` too.

    The first success wins and cancels the other. A primary failing before the hedge is sent
    ends the race with its error (the router then falls back as usual); once both run, the race
    fails only when both have failed, with the primary's error.
    """
    winner: list[T] = []
    errors: list[LLMClientError] = []
    hedge_sent = anyio.Event()

    async def run_primary(scope: anyio.CancelScope) -> None:
        try:
            winner.append(await primary())
        except LLMClientError as exc:
            errors.insert(0, exc)
            if hedge_sent.is_set() and len(errors) == 1:
                return  # the hedge is in flight: its answer may still win
        scope.cancel()

    async def run_hedge(scope: anyio.CancelScope) -> None:
        await clock.sleep(delay)
        hedge_sent.set()
        try:
            winner.append(await hedge())
        except LLMClientError as exc:
            errors.append(exc)
            if len(errors) == 1:
                return  # the primary is still running
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(run_primary, group.cancel_scope)
        group.start_soon(run_hedge, group.cancel_scope)
    if winner:
        return winner[0]
    raise errors[0]
