"""A worker's money allowance for one provider: reservations granted without a Redis call.

The allowance is money Redis holds for this worker (:meth:`actors.cluster.SharedLedger.allow`:
counted in the day's open total like any reservation, expiring after ``reservation_ttl`` unless
renewed). The worker grants a request's reservation from its free part in the ledger's loop, with
no call; settles are charged against it locally and pushed with the next resize (one at a time,
the charges of all settles since the last one together).

Exactness: at every moment Redis holds ``held >= out + unshared + free`` for the allowance, where
``out`` is what open requests drew from it and ``unshared`` what they were charged and not yet
pushed: Redis's settled + open total never counts less than the worker spent or may spend. While a
resize is in flight, only its ``carry`` (the free part it keeps, whatever Redis answers) may be
drawn from. A resize that failed may have run: the worker then assumes the smaller hold ``out +
carry``, and its charges are counted exactly once (the next resize carries them; Redis adds them
unless that call ran).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from actors.cluster import ClusterUnavailable, SharedLedger

__all__ = ["Allowance", "give_back"]

#: The free part wished, in reservations of the largest recent size.
_WANT = 8
#: Lost resizes remembered one by one (more are merged).
_UNSURE = 32


@dataclass(slots=True)
class Allowance:
    """What this worker knows of its allowance for one provider (module docstring)."""

    key: str
    #: What Redis holds for it, as last answered (or assumed after a failed resize).
    held: int = 0
    #: Charges settled locally, not yet pushed.
    unshared: int = 0
    #: The local clock when Redis last answered a resize (draws stop ``fresh`` after it).
    renewed: float = float("-inf")
    #: A resize in flight: while it is, only ``budget`` may be drawn.
    syncing: bool = False
    budget: int = 0
    #: Drawn from since the last tick (an idle allowance gives its free part back).
    drew: bool = False
    #: The largest recent reservation (decays by 1/8 a reservation): the unit of ``want``.
    largest: int = 0
    #: Open reservations drawn from it: reservation id -> amount.
    drawn: dict[int, int] = field(default_factory=dict)
    #: Redis granted no free part (the room is small): no resize to grow until the next tick.
    starved: bool = False
    #: The number of the last resize asked for (Redis ignores an older one run late).
    calls: int = 0
    #: The resize in flight: its number and the charges it pushes.
    pushing: tuple[int, int] = (0, 0)
    #: (call, charge) of resizes whose answer was lost: the next call charges each unless it
    #: ran (exactly once).
    unsure: list[tuple[int, int]] = field(default_factory=list)

    def next_call(self) -> int:
        self.calls += 1
        return self.calls

    @property
    def out(self) -> int:
        return sum(self.drawn.values())

    def free(self) -> int:
        """What may be drawn now."""
        if self.syncing:
            return self.budget
        return max(0, self.held - self.out - self.unshared)

    def note(self, amount: int) -> None:
        """A reservation of ``amount`` was asked for (sizes ``want`` and ``min_free``)."""
        self.largest = max(amount, self.largest - self.largest // 8)

    @property
    def want(self) -> int:
        return _WANT * self.largest

    def draw(self, reservation_id: int, amount: int) -> None:
        self.drawn[reservation_id] = amount
        self.drew = True
        if self.syncing:
            self.budget -= amount

    def lost(self, call: int, charge: int) -> None:
        """Resize ``call`` pushing ``charge`` may or may not have run."""
        if charge:
            self.unsure.append((call, charge))
        if len(self.unsure) > _UNSURE:  # merged: the older charge may count twice, never less
            (_, first), (second, other) = self.unsure[:2]
            self.unsure[:2] = [(second, first + other)]

    def low(self) -> bool:
        """Below half of the free part wished: time to resize (grow)."""
        return not self.syncing and self.free() < self.want // 2


async def give_back(shared: SharedLedger, day: str, provider: str, allowance: Allowance) -> bool:
    """Push ``allowance``'s charges and give its free part back (a stop: no resize in flight);
    ``True`` unless Redis should be asked again (a lost answer's charge then rides, exactly
    once, with the next try)."""
    charge, allowance.unshared = allowance.unshared, 0
    call = allowance.next_call()
    try:
        granted = await shared.allow(allowance.key, provider, day, charge=charge,
                                     out=allowance.out, carry=0, want=0, min_free=0, call=call,
                                     unsure=list(allowance.unsure))
    except anyio.ClosedResourceError:
        return True  # the link is closed: nothing more can be pushed
    except ClusterUnavailable:
        allowance.lost(call, charge)
        return False
    if granted is None:  # Redis is gathering the journals: nothing ran
        allowance.unshared += charge
        return False
    allowance.unsure.clear()
    allowance.held = granted[0]
    return True
