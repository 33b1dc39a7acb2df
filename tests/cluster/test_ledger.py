"""SharedLedger against a real redis-server: exact limits across clients, TTLs, seeding."""

from __future__ import annotations

import anyio
import pytest

from actors.cluster import (
    ClusterConfig,
    DaySeed,
    LedgerLimits,
    OpenReservation,
    RedisLink,
    ReserveRefused,
    ReserveResult,
    SettleResult,
    SharedLedger,
)

DAY = "2026-11-30"
CENT = 10_000_000  # nano-USD


class Journal:
    """An instance's durable journal (what its SQLite ledger would answer), counting reads."""

    def __init__(self, seed: DaySeed | None = None) -> None:
        self.seed = seed or DaySeed(0)
        self.reads: list[str] = []

    async def __call__(self, day: str) -> DaySeed:
        self.reads.append(day)
        return self.seed


def _ledger(link: RedisLink, limits: LedgerLimits, instance: str = "a",
            journal: Journal | None = None) -> SharedLedger:
    return SharedLedger(link, instance, journal or Journal(), limits)


async def test_reserve_refuses_past_max_cost_per_request(link: RedisLink) -> None:
    ledger = _ledger(link, LedgerLimits(max_cost_per_request=5 * CENT))
    assert await ledger.reserve("r1", 5 * CENT, "openai", DAY) == ReserveResult(True, 5 * CENT)
    assert await ledger.reserve("r2", 5 * CENT + 1, "openai", DAY) == ReserveResult(
        False, 0, ReserveRefused("request", 5 * CENT + 1, 5 * CENT))


async def test_daily_limit_counts_settled_plus_every_open_reservation(link: RedisLink) -> None:
    ledger = _ledger(link, LedgerLimits(daily_cost_limit=10 * CENT))
    assert (await ledger.reserve("r1", 4 * CENT, "openai", DAY)).granted
    assert await ledger.settle("r1", 3 * CENT, "openai", DAY) == SettleResult(True, False,
                                                                               4 * CENT)
    assert (await ledger.reserve("r2", 6 * CENT, "openai", DAY)).granted
    assert await ledger.reserve("r3", 2 * CENT, "openai", DAY) == ReserveResult(
        False, 0, ReserveRefused("daily", 3 * CENT, 6 * CENT))
    assert await ledger.reserve("r3", 1 * CENT, "openai", DAY) == ReserveResult(True, CENT)
    assert await ledger.totals(DAY) == (3 * CENT, 7 * CENT)


async def test_provider_daily_limit_and_turn_budget_refuse_independently(link: RedisLink) -> None:
    ledger = _ledger(link, LedgerLimits(provider_daily_limits={"openrouter": 3 * CENT},
                                        max_cost_per_turn=5 * CENT))
    assert (await ledger.reserve("r1", 3 * CENT, "openrouter", DAY, turn_id="t1")).granted
    assert await ledger.reserve("r2", 1, "openrouter", DAY) == ReserveResult(
        False, 0, ReserveRefused("provider", 0, 3 * CENT))
    assert (await ledger.reserve("r2", 2 * CENT, "openai", DAY, turn_id="t1")).granted
    assert await ledger.reserve("r3", 1, "openai", DAY, turn_id="t1") == ReserveResult(
        False, 0, ReserveRefused("turn", 0, 5 * CENT))
    assert (await ledger.settle("r1", 1 * CENT, "openrouter", DAY, turn_id="t1")).charged
    assert await ledger.turn_totals("t1") == (CENT, 2 * CENT)
    assert await ledger.totals(DAY, "openrouter") == (CENT, 0)
    assert (await ledger.reserve("r3", 2 * CENT, "openai", DAY, turn_id="t1")).granted
    assert (await ledger.reserve("r4", 2 * CENT, "openai", DAY, turn_id="t2")).granted


async def test_settle_and_release_are_idempotent_and_never_charge_twice(link: RedisLink) -> None:
    ledger = _ledger(link, LedgerLimits())
    assert (await ledger.reserve("r1", 4 * CENT, "openai", DAY)).granted
    assert await ledger.reserve("r1", 4 * CENT, "openai", DAY) == ReserveResult(True, 4 * CENT)
    assert await ledger.settle("r1", 2 * CENT, "openai", DAY) == SettleResult(True, False,
                                                                               4 * CENT)
    assert await ledger.settle("r1", 2 * CENT, "openai", DAY) == SettleResult(False, False, 0)
    assert await ledger.release("r1") is False
    assert await ledger.reserve("r1", CENT, "openai", DAY) == ReserveResult(
        False, 0, ReserveRefused("ended", 0, 0))
    assert (await ledger.reserve("r2", CENT, "openai", DAY)).granted
    assert await ledger.release("r2") is True
    assert await ledger.release("r2") is False
    assert await ledger.settle("r2", CENT, "openai", DAY) == SettleResult(False, False, 0)
    assert await ledger.totals(DAY) == (2 * CENT, 0)


async def test_200_concurrent_reserves_from_two_clients_never_pass_the_daily_limit(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    limits = LedgerLimits(daily_cost_limit=100 * CENT + 7)
    granted: list[str] = []
    # Exactness, not latency, is under test: a loaded test machine may queue 200 calls > 0.75 s.
    patient = cluster_config.model_copy(update={"op_timeout": 5.0, "connect_timeout": 5.0})
    async with RedisLink(patient) as one_link, RedisLink(patient) as other:
        ledgers = [_ledger(one_link, limits, "a"), _ledger(other, limits, "b")]

        async def one(i: int) -> None:
            if (await ledgers[i % 2].reserve(f"r{i}", 3 * CENT + 1, "openai", DAY)).granted:
                granted.append(f"r{i}")

        async with anyio.create_task_group() as group:
            for i in range(200):
                group.start_soon(one, i)
        assert len(granted) == 33  # 33 x (3 cents + 1) = 99 cents + 33 <= $1 + 7; a 34th passes
        assert await ledgers[1].totals(DAY) == (0, 33 * (3 * CENT + 1))


async def test_a_reservation_expired_after_its_ttl_is_charged_and_a_late_settle_too(
    redis_server: object, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update={"reservation_ttl": 0.2})
    async with RedisLink(config) as link:
        ledger = _ledger(link, LedgerLimits(daily_cost_limit=6 * CENT))
        assert (await ledger.reserve("r1", 5 * CENT, "openai", DAY)).granted
        assert not (await ledger.reserve("r2", 2 * CENT, "openai", DAY)).granted
        await anyio.sleep(0.3)
        # Expired unsettled: charged what it held (the upstream may have billed it), not freed.
        assert not (await ledger.reserve("r2", 2 * CENT, "openai", DAY)).granted
        assert (await ledger.reserve("r2", CENT, "openai", DAY)).granted
        # A late settle adds only what it cost beyond that charge (none here); one that never
        # held a reservation (lost with Redis's data) is charged whole.
        assert await ledger.settle("r1", 4 * CENT, "openai", DAY) == SettleResult(
            True, True, 5 * CENT)
        assert await ledger.settle("r9", CENT, "openai", DAY) == SettleResult(True, True, 0)
        assert await ledger.totals(DAY) == (6 * CENT, CENT)


async def test_each_instance_seeds_the_day_once_from_its_journal(
    link: RedisLink, cluster_config: ClusterConfig
) -> None:
    limits = LedgerLimits(daily_cost_limit=10 * CENT)
    journal_a = Journal(DaySeed(4 * CENT, {"openai": 4 * CENT}))
    journal_b = Journal(DaySeed(3 * CENT, {"openrouter": 3 * CENT},
                                [OpenReservation("held", 2 * CENT, "openrouter")]))
    async with RedisLink(cluster_config) as other:
        a = _ledger(link, limits, "a", journal_a)
        b = _ledger(other, limits, "b", journal_b)
        assert (await a.reserve("r1", CENT, "openai", DAY)).granted
        assert (await a.reserve("r2", CENT, "openai", DAY)).granted
        assert await b.reserve("r3", CENT, "openai", DAY) == ReserveResult(
            False, 0, ReserveRefused("daily", 7 * CENT, 4 * CENT))
        assert (journal_a.reads, journal_b.reads) == ([DAY], [DAY])
        assert await a.totals(DAY, "openrouter") == (3 * CENT, 2 * CENT)
        assert await b.seed_day_total(DAY, journal_b.seed) is False
        assert (await b.settle("held", CENT, "openrouter", DAY)).late is False


async def test_negative_amounts_are_refused_before_redis(link: RedisLink) -> None:
    ledger = _ledger(link, LedgerLimits())
    with pytest.raises(ValueError, match=r"^amount must not be negative$"):
        await ledger.reserve("r", -1, "openai", DAY)
    with pytest.raises(ValueError, match=r"^actual must not be negative$"):
        await ledger.settle("r", -1, "openai", DAY)
