"""The faults a chaos run injects, and the simulated providers it injects them into.

A schedule is a list of :class:`FaultEvent` drawn from the run's seed: the same seed gives the
same events, on the same targets, in the same order. Each event is applied by
:class:`FaultInjector` and undone before the next one starts, so at most one fault is active at
a time and its effect can be attributed (restarts, breaker trips) when the run is accounted for.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio

from simulator.process import SimulatorProcess

__all__ = [
    "FAULT_KINDS",
    "FaultEvent",
    "SimulatedProvider",
    "max_in_window",
    "schedule",
]

FAULT_KINDS = (
    "storm_429",
    "burst_5xx",
    "timeouts",
    "resets",
    "midstream",
    "kill_restart",
    "key_rotation",
    "mcp_kill",
    "mailbox_flood",
)
"""Every kind of fault, in the order a cycle of the schedule shuffles."""

QUIET: dict[str, Any] = {
    "rate_429": 0.0, "rate_500": 0.0, "rate_502": 0.0, "rate_503": 0.0, "rate_timeout": 0.0,
    "rate_reset": 0.0, "rate_midstream_drop": 0.0, "rate_midstream_error": 0.0, "latency": 0.0,
    "chunk_delay": 0.0,
}
"""The fault settings that undo every simulator fault."""

PATCHES: dict[str, dict[str, Any]] = {
    "storm_429": {"rate_429": 0.8, "retry_after": 1.0},
    "burst_5xx": {"rate_500": 0.4, "rate_502": 0.3, "rate_503": 0.3},
    "timeouts": {"rate_timeout": 0.4, "hang_seconds": 8.0},
    "resets": {"rate_reset": 0.5},
    "midstream": {"rate_midstream_drop": 0.3, "rate_midstream_error": 0.3, "chunk_delay": 0.02},
}


@dataclass(frozen=True)
class FaultEvent:
    """One fault: its kind, the provider (or MCP server) it hits, and when, from the start."""

    kind: str
    target: str
    at_s: float


def schedule(rng: random.Random, providers: list[str], start_s: float, spacing_s: float,
             until_s: float) -> list[FaultEvent]:
    """Faults every ``spacing_s`` from ``start_s`` to ``until_s``: cycles of every kind, shuffled.

    Key rotation hits the providers whose key the harness controls (all of them); a mailbox flood
    hits the provider with the tiny mailbox (the last one); an MCP kill hits the demo server.
    """
    events: list[FaultEvent] = []
    at = start_s
    while at + spacing_s <= until_s:
        kinds = list(FAULT_KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            if at + spacing_s > until_s:
                break
            if kind == "mcp_kill":
                target = "demo"
            elif kind == "mailbox_flood":
                target = providers[-1]
            else:
                target = rng.choice(providers)
            events.append(FaultEvent(kind, target, round(at, 3)))
            at += spacing_s
    return events


@dataclass
class SimulatedProvider:
    """A simulator process serving one provider, with its statistics kept across restarts."""

    name: str
    sim: SimulatorProcess
    rpm: int
    tpm: int
    lives: list[dict[str, Any]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)

    async def configure_faults(self, **faults: Any) -> None:
        await self.sim.configure(faults=faults)

    async def set_keys(self, keys: list[str]) -> None:
        await self.sim.configure(api_keys=keys)

    async def kill_and_restart(self, down_s: float) -> None:
        """SIGKILL the process, keep it down ``down_s`` seconds, start it again on its port."""
        self.lives.append(await self.sim.stats())
        self.sim.kill()
        await anyio.sleep(down_s)
        await self.sim.restart()

    async def final_stats(self) -> list[dict[str, Any]]:
        """The statistics of every life of the process, the current one last."""
        return [*self.lives, await self.sim.stats()]


def max_in_window(log: list[list[Any]], window_s: float = 60.0) -> tuple[int, int]:
    """The most requests and tokens (prompt + completion) in any ``window_s`` of a stats log."""
    entries = sorted((float(e[0]), int(e[2]) + int(e[3])) for e in log)
    most_requests = most_tokens = tokens = 0
    start = 0
    for end, (at, amount) in enumerate(entries):
        tokens += amount
        while entries[start][0] <= at - window_s:
            tokens -= entries[start][1]
            start += 1
        most_requests = max(most_requests, end - start + 1)
        most_tokens = max(most_tokens, tokens)
    return most_requests, most_tokens
