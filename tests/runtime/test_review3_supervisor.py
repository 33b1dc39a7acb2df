"""A crash loop that never runs quietly for ``reset_after`` keeps its restarts at the maximum
backoff however long it lasts. The n-th restart's delay was computed as ``multiplier ** (n-1)``
before the cap: with the default doubling, the 1025th consecutive restart (2.0 ** 1024) raised
OverflowError in the supervisor, which then failed and stopped the whole system (a provider
unreachable for some hours, with traffic, crashes that often)."""

from __future__ import annotations

import random

from runtime import ActorState, ActorSystem, Backoff, SupervisorSpec
from runtime.testing import FakeClock
from tests.runtime.test_supervisor import child, crash


def test_the_delay_of_any_restart_number_is_at_most_the_maximum() -> None:
    backoff = Backoff(initial=0.2, maximum=30.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff.delay(n, rng) for n in (1, 2, 9, 1024, 1025, 10**6)] == [
        0.2, 0.4, 30.0, 30.0, 30.0, 30.0]


async def test_a_restart_whose_growth_overflows_waits_the_maximum_and_the_system_runs() -> None:
    # A multiplier that overflows at the 3rd restart stands for the default's 1025th.
    steep = Backoff(initial=1.0, maximum=8.0, multiplier=1e300, jitter=0.0, reset_after=100.0)
    clock = FakeClock()
    spec = SupervisorSpec("root", [child("a")], backoff=steep, max_restarts=100,
                          max_seconds=1.0)
    async with ActorSystem(spec, clock=clock) as system:
        for delay in (1.0, 8.0, 8.0, 8.0):
            await crash(system, "a")
            await clock.advance(delay - 0.5)  # halves: exact in binary
            assert system.status()["a"].state is ActorState.RESTARTING, delay
            await clock.advance(0.5)
            assert system.status()["a"].state is ActorState.RUNNING, delay
        assert system.status()["a"].restart_count == 4
