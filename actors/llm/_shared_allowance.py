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

Expiry: Redis holds the allowance at least ``reservation_ttl`` from when the last resize it ran
was *sent* (it ran no earlier). The worker draws from it only until :data:`LIFETIME` of that
(the renewal sent, answered, on the monotonic clock: :attr:`Allowance.renewed`), a tenth of the
TTL before Redis can expire it. A request drawn before then may run on: the allowance is renewed
every ``journal_interval`` while anything is drawn from it, and if the renewals fail until Redis
expires it, Redis charges its whole hold to the day (it is never given back to other workers);
the worker's next resize that Redis runs takes that charge back, pushing what it really spent and
holding what is still out.

A worker that dies (killed, or its runtime stopped) never comes back to its allowance: a new
process has new keys. Redis's charge of the whole hold stays: it holds what the dead worker spent
and had not pushed and what its open requests drew (which the new process, from the journal's
``holds``, charges what they held: the same money, counted once in Redis), and over-counts the
free part it held then, at most :data:`_WANT` of its largest recent reservations per provider.
A graceful stop gives the free part back first (only what is drawn stays held, then charged).
Redis restarted empty: the new process's journal seeds all of it once (those holds included).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from actors.cluster import ClusterUnavailable, SharedLedger

__all__ = ["LIFETIME", "Allowance", "Resize", "give_back"]

#: Of ``reservation_ttl``, how long after a renewal was sent the worker may draw from it: the
#: tenth left is the margin for the two hosts' clock rates and a busy event loop (as a lease's).
LIFETIME = 0.9
#: The free part wished, in reservations of the largest recent size.
_WANT = 8
#: Lost resizes remembered one by one (more are merged).
_UNSURE = 32


@dataclass(frozen=True, slots=True)
class Resize:
    """One resize call: what it pushes, keeps and asks for (see ``SharedLedger.allow``)."""

    call: int
    charge: int
    out: int
    carry: int
    want: int
    min_free: int
    idle: bool
    unsure: list[tuple[int, int]]
    #: The local monotonic clock before the call was written (Redis ran it no earlier).
    sent: float

    async def run(self, shared: SharedLedger, key: str, provider: str,
                  day: str) -> tuple[int, int] | None:
        return await shared.allow(key, provider, day, charge=self.charge, out=self.out,
                                  carry=self.carry, want=self.want, min_free=self.min_free,
                                  call=self.call, unsure=self.unsure)


@dataclass(slots=True)
class Allowance:
    """What this worker knows of its allowance for one provider (module docstring)."""

    key: str
    #: What Redis holds for it, as last answered (or assumed after a failed resize).
    held: int = 0
    #: Charges settled locally, not yet pushed.
    unshared: int = 0
    #: The local monotonic clock when the last resize Redis answered was sent: Redis holds the
    #: allowance ``reservation_ttl`` from then at least (draws stop :data:`LIFETIME` of it after).
    renewed: float = float("-inf")
    #: The resize in flight: while there is one, only ``budget`` may be drawn.
    resizing: Resize | None = None
    budget: int = 0
    #: Drawn from since the last tick (an idle allowance gives its free part back).
    drew: bool = False
    #: The largest recent reservation (decays by 1/8 a reservation): the unit of ``want``.
    largest: int = 0
    #: Open reservations drawn from it: reservation id -> amount.
    drawn: dict[int, int] = field(default_factory=dict)
    #: Redis granted no free part (the room is small): no resize to grow until the next tick.
    starved: bool = False
    #: A resize asked to grow and got no answer (or Redis was gathering the journals): the next
    #: tick asks again, without waiting for a request to go to Redis.
    regrow: bool = False
    #: The number of the last resize asked for (Redis ignores an older one run late).
    calls: int = 0
    #: (call, charge) of resizes whose answer was lost: the next call charges each unless it
    #: ran (exactly once).
    unsure: list[tuple[int, int]] = field(default_factory=list)

    @property
    def syncing(self) -> bool:
        return self.resizing is not None

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

    def start(self, *, idle: bool, now: float) -> Resize:
        """The next resize, sent at ``now``: it pushes the charges and keeps what is drawn plus
        (unless ``idle``: the free part goes back) the free part, which alone may be drawn until
        its answer."""
        carry = 0 if idle else self.free()
        charge, self.unshared = self.unshared, 0
        self.calls += 1
        resize = Resize(self.calls, charge, self.out, carry, 0 if idle else self.want,
                        0 if idle else self.largest, idle, list(self.unsure), now)
        self.resizing, self.budget = resize, carry
        return resize

    def finish(self, resize: Resize, answered: bool,
               granted: tuple[int, int] | None) -> bool | None:
        """``resize`` ended: ``answered`` with ``granted`` (``None``: Redis was gathering the
        journals, nothing ran), or not (it may have run). Returns the resize to run next:
        ``True`` an idle one (the room shrank: give back the free part kept), ``False`` one
        pushing the charges waiting, ``None`` none."""
        self.resizing, self.budget = None, 0
        self.regrow = not resize.idle and (granted is None or granted[0] < 0)
        if granted is not None and granted[0] >= 0:
            self.unsure.clear()
            self.held, free = granted
            self.renewed = max(self.renewed, resize.sent)  # not from the answer: it may be late
            if not resize.idle:  # asked to grow: none until the next tick
                self.starved = free == 0
            if free < resize.carry:
                return True
            return False if self.unshared else None
        if granted is None and answered:
            self.unshared += resize.charge
            return None
        if granted is not None:  # -1: an immediate retry found that it ran
            self.unsure.clear()
        else:
            self.lost(resize.call, resize.charge)
        # It may have run: Redis may hold only what the call kept.
        self.held = min(self.held, resize.out + resize.carry)
        return None


async def give_back(shared: SharedLedger, day: str, provider: str, allowance: Allowance,
                    now: float) -> bool:
    """Push ``allowance``'s charges and give its free part back (a stop: no resize in flight);
    ``True`` unless Redis should be asked again (a lost answer's charge then rides, exactly
    once, with the next try)."""
    resize = allowance.start(idle=True, now=now)
    try:
        granted = await resize.run(shared, allowance.key, provider, day)
    except anyio.ClosedResourceError:
        return True  # the link is closed: nothing more can be pushed
    except ClusterUnavailable:
        allowance.finish(resize, False, None)
        return False
    allowance.finish(resize, True, granted)
    return granted is not None
