"""The ledger's reservations and day totals, shared by every worker and instance."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from . import _ledger_scripts as lua
from ._errors import ClusterUnavailable
from ._link import RedisLink

__all__ = [
    "DaySeed",
    "LedgerLimits",
    "OpenReservation",
    "ReserveRefused",
    "ReserveResult",
    "SettleResult",
    "SharedLedger",
]


@dataclass(frozen=True, slots=True)
class LedgerLimits:
    """Limits in integer nano-USD; ``None`` is unlimited."""

    max_cost_per_request: int | None = None
    daily_cost_limit: int | None = None
    provider_daily_limits: Mapping[str, int] = field(default_factory=dict)
    max_cost_per_turn: int | None = None


@dataclass(frozen=True, slots=True)
class OpenReservation:
    """One reservation an instance still holds (re-declared when Redis lost it)."""

    request_id: str
    amount: int
    provider: str
    turn_id: str | None = None


@dataclass(frozen=True, slots=True)
class DaySeed:
    """What one instance's durable journal says about a day: its settled spend and holdings."""

    settled: int
    by_provider: Mapping[str, int] = field(default_factory=dict)
    open: Sequence[OpenReservation] = ()


@dataclass(frozen=True, slots=True)
class ReserveRefused:
    """A refusal: ``limit`` is ``"request"``, ``"daily"``, ``"provider"`` or ``"turn"``.

    ``settled`` and ``reserved`` are what that limit already held (for ``"request"``: the
    amount asked and the limit).
    """

    limit: str
    settled: int
    reserved: int


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """``granted`` with the amount held, or ``refused`` (a :class:`ReserveRefused`)."""

    granted: bool
    amount: int
    refused: ReserveRefused | None = None


@dataclass(frozen=True, slots=True)
class SettleResult:
    """``charged``: the actual cost was added to the day; ``late``: no open reservation was found
    (expired or lost), yet the money was spent so it is charged (one that expired was charged
    ``reserved`` then: only what the cost passes it by is added); ``reserved``: what was held."""

    charged: bool
    late: bool
    reserved: int


Journal = Callable[[str], Awaitable[DaySeed]]


class SharedLedger:
    """Reservations, settles and day totals, atomic in Redis: exact across instances.

    A reservation is refused when it would pass ``max_cost_per_request``, the day's limit
    (settled on ``day`` + every open reservation + this one), the provider's daily limit, or the
    turn's limit. Reservations expire after ``reservation_ttl`` (a dead instance does not hold
    money forever) and are then charged what they held: the settle that never came may have been
    billed; a later settle adds what its cost passes that charge by (within ``2 x
    reservation_ttl`` of the expiry; after it, the whole cost on top), a later release leaves it.
    Day totals live ``day_ttl``.

    Day totals are seeded from each instance's durable journal: the first reserve of an instance
    on a day (and the first after Redis lost its data) calls ``journal(day)`` and adds what it
    returns once, with the instance's open reservations. When Redis holds no ledger epoch (first
    use, or restarted empty) the day and provider limits grant nothing for ``2 x
    journal_interval + op_timeout``: every live instance offers its journal on a timer of
    ``journal_interval`` (:meth:`seed_day_total`), so a grant never counts on a day that still
    misses an instance's spend; a reserve waits out that window. Raises
    :class:`ClusterUnavailable` when Redis does not answer (fail closed: nothing was reserved).
    """

    def __init__(self, link: RedisLink, instance_id: str, journal: Journal,
                 limits: LedgerLimits) -> None:
        if not instance_id or "|" in instance_id:
            raise ValueError("instance_id must be non-empty and must not contain '|'")
        self._link = link
        self.instance_id = instance_id
        self._journal = journal
        self.limits = limits
        config = link.config
        self._res_ttl = round(config.reservation_ttl * 1000)
        self._day_ttl = round(config.day_ttl * 1000)
        # Every instance offers its journal each journal_interval (a call may take op_timeout):
        # after Redis lost its data, every journal is back within this window.
        self._window = round((2 * config.journal_interval + config.op_timeout) * 1000)
        self._reserve = link.script(lua.RESERVE)
        self._settle = link.script(lua.SETTLE)
        self._release = link.script(lua.RELEASE)
        self._seed = link.script(lua.SEED)
        self._allow = link.script(lua.ALLOW)
        self._day_keys: dict[str, list[str]] = {}

    def _keys(self, day: str, turn_id: str | None) -> list[str]:
        key = self._link.key
        known = self._day_keys.get(day)
        if known is None:  # built once a day (~7 us a call)
            if len(self._day_keys) > 4:
                self._day_keys.clear()
            known = self._day_keys[day] = [
                key("ledger", "open"), key("ledger", "resv"), key("ledger", "reserved"),
                key("ledger", "day", day), key("ledger", "noturn"), key("ledger", "ended"),
                key("ledger", "epoch"), key("ledger", "lapsed")]
        keys = list(known)
        if turn_id is not None:
            keys[4] = self._turn_key(turn_id)
        return keys

    def _turn_key(self, turn_id: str) -> str:
        if "|" in turn_id:  # a reservation's record ends "|<turn key>" (_ledger_scripts.forget)
            raise ValueError("turn_id must not contain '|'")
        return self._link.key("ledger", "turn", turn_id)

    async def reserve(self, request_id: str, amount: int, provider: str, day: str, *,
                      turn_id: str | None = None) -> ReserveResult:
        """Hold ``amount`` nano-USD for ``request_id`` if every limit allows it.

        Idempotent for a request already holding a reservation. A request that was already
        settled or released is refused with limit ``"ended"``.
        """
        if amount < 0:
            raise ValueError("amount must not be negative")
        limits = self.limits
        args = [request_id, amount, provider, _or_none(limits.max_cost_per_request),
                _or_none(limits.daily_cost_limit),
                _or_none(limits.provider_daily_limits.get(provider)),
                _or_none(limits.max_cost_per_turn), self._res_ttl, self._day_ttl,
                self.instance_id, "0" if turn_id is None else "1"]
        shared = limits.daily_cost_limit is not None or bool(limits.provider_daily_limits)
        args.append(self._window if shared else -1)
        keys = self._keys(day, turn_id)
        for _ in range(4):
            answer = await self._link.run(self._reserve, "ledger reserve", keys, args)
            status = int(answer[0])
            if status in (-2, -3):
                await self.seed_day_total(day, await self._journal(day))
                if status == -3:  # the other journals are on their way: fail closed until then
                    await anyio.sleep(int(answer[1]) / 1000)
                continue
            if status == -1:
                return ReserveResult(False, 0, ReserveRefused("ended", 0, 0))
            if status == 1:
                return ReserveResult(True, int(answer[1]))
            reason = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
            return ReserveResult(False, 0, ReserveRefused(reason, int(answer[2]), int(answer[3])))
        raise ClusterUnavailable("ledger reserve", "Redis lost its data again while re-seeding")

    async def settle(self, request_id: str, actual: int, provider: str, day: str, *,
                     turn_id: str | None = None) -> SettleResult:
        """Charge ``actual`` nano-USD to ``day`` and end the reservation (idempotent).

        ``provider`` and ``turn_id`` are used when the reservation is gone (expired, or lost
        with a restarted Redis): the money was spent, so it is charged anyway.
        """
        if actual < 0:
            raise ValueError("actual must not be negative")
        keys = self._keys(day, turn_id)
        args = [request_id, actual, provider, self._res_ttl, self._day_ttl,
                "0" if turn_id is None else "1", self.instance_id]
        for _ in range(4):
            answer = await self._link.run(self._settle, "ledger settle", keys, args)
            status, reserved = int(answer[0]), int(answer[1])
            if status == -2:  # Redis lost the day: the journal goes first (see SETTLE)
                await self.seed_day_total(day, await self._journal(day))
                continue
            return SettleResult(status > 0, status >= 2, reserved)
        raise ClusterUnavailable("ledger settle", "Redis lost its data again while re-seeding")

    async def allow(self, allowance_id: str, provider: str, day: str, *, charge: int, out: int,
                    carry: int, want: int, min_free: int, call: int,
                    unsure: Sequence[tuple[int, int]] = (),
                    share: int = 4) -> tuple[int, int] | None:
        """Resize this instance's allowance ``allowance_id`` for ``provider``; the new hold and
        the free part Redis granted (at most ``carry`` of the hold's free part may be older).

        An allowance is money held in Redis like a reservation (counted in the day's open total,
        expiring after ``reservation_ttl`` unless renewed by the next call) that the instance grants
        its requests from without a call. ``charge`` (what it settled locally since the last call)
        moves from the hold to ``day``'s settled. The new hold keeps ``out`` (its requests' open
        reservations) plus ``carry`` (the free part it may draw from until this answer) and grows to
        ``out + free``: ``free`` is ``want`` while that is at most ``1 / share`` of the limits' room
        left without this allowance (and ``min_free`` at least), else 0. ``call`` numbers the calls
        of one allowance (increasing): a call that Redis runs after a later one changes nothing and
        answers ``(-1, 0)`` (a call written on a connection that broke may still run). ``unsure``:
        ``(call, charge)`` of earlier calls whose answer was lost: each charge is added unless that
        call ran (so a charge is counted exactly once). An allowance that expired (not renewed for
        ``reservation_ttl``) was charged its whole hold; the next call takes that charge back (its
        ``charge`` and ``out`` say what the worker spent and holds). Returns ``None`` while Redis
        gathers the journals after losing its data (nothing changed). Raises
        :class:`ClusterUnavailable` when Redis does not answer (the script may or may not have run).
        """
        if min(charge, out, carry, want, min_free) < 0 or share < 1:
            raise ValueError("allowance amounts must not be negative")
        limits = self.limits
        shared = limits.daily_cost_limit is not None or bool(limits.provider_daily_limits)
        args: list[object] = [allowance_id, provider, charge, out, carry, want, min_free,
                              _or_none(limits.daily_cost_limit),
                              _or_none(limits.provider_daily_limits.get(provider)),
                              self._res_ttl, self._day_ttl, self.instance_id,
                              self._window if shared else -1, share, call]
        for earlier in unsure:
            args += earlier
        keys = [*self._keys(day, None), self._link.key("ledger", "alw", allowance_id)]  # KEYS[9]
        for _ in range(4):
            answer = await self._link.run(self._allow, "ledger allowance", keys, args)
            status = int(answer[0])
            if status == -2:
                await self.seed_day_total(day, await self._journal(day))
                continue
            if status == -3:
                return None
            return (int(answer[1]), int(answer[2])) if status == 1 else (-1, 0)
        raise ClusterUnavailable("ledger allowance", "Redis lost its data again while re-seeding")

    async def release(self, request_id: str, day: str | None = None) -> bool:
        """End the reservation without a charge; ``True`` if one was open. Idempotent. One that
        had expired stays charged. With ``day``, what else expired is charged to it (swept)."""
        answer = await self._link.run(self._release, "ledger release",
                                      self._keys(day or "-", None),
                                      [request_id, self._res_ttl, self._day_ttl,
                                       "0" if day is None else "1"])
        return bool(answer)

    async def seed_day_total(self, day: str, seed: DaySeed) -> bool:
        """Add this instance's journal for ``day`` to the shared total, once per instance and day.

        Also re-declares the instance's open reservations that Redis does not know. Returns
        ``False`` when this instance had already seeded the day (nothing changed).
        """
        args: list[object] = [self.instance_id, seed.settled, self._res_ttl, self._day_ttl,
                              self._window, len(seed.by_provider)]
        for provider, total in seed.by_provider.items():
            args += [provider, total]
        for held in seed.open:
            turn = self._turn_key(held.turn_id) if held.turn_id is not None else ""
            args += [held.request_id, held.amount, held.provider, turn]
        answer = await self._link.run(self._seed, "ledger seed", self._keys(day, None), args)
        return bool(answer)

    async def totals(self, day: str, provider: str | None = None) -> tuple[int, int]:
        """Settled on ``day`` and reserved now (all days), for ``provider`` when given."""
        key = self._link.key
        field = "settled" if provider is None else f"p:{provider}"
        open_field = "total" if provider is None else f"p:{provider}"
        client = self._link.client

        async def read() -> tuple[int, int]:
            settled = await client.hget(key("ledger", "day", day), field)
            reserved = await client.hget(key("ledger", "reserved"), open_field)
            return int(settled or 0), int(reserved or 0)

        return await self._link.call("ledger totals", read)

    async def turn_totals(self, turn_id: str) -> tuple[int, int]:
        """Settled and reserved of one turn."""
        client = self._link.client

        async def read() -> tuple[int, int]:
            values = await client.hmget(self._link.key("ledger", "turn", turn_id),
                                        ["settled", "reserved"])
            return int(values[0] or 0), int(values[1] or 0)

        return await self._link.call("ledger turn", read)

    def __repr__(self) -> str:
        return f"<SharedLedger instance={self.instance_id!r} {self.limits!r}>"


def _or_none(value: int | None) -> int:
    return -1 if value is None else value
