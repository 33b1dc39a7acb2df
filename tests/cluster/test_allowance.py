"""Money allowances against a real redis-server: a worker grants reservations without a call,
exactly (Redis counts the whole allowance), near the limit per request, and a dead worker's
allowance is charged at its TTL (its requests may have been billed)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from actors.cluster import (
    ClusterConfig,
    ClusterUnavailable,
    DaySeed,
    LedgerLimits,
    OpenReservation,
    RedisLink,
    ReserveRefused,
    ReserveResult,
    SharedLedger,
)
from actors.llm import CostConfig, LLMCostLimitError, ModelCatalog, ModelPrice
from actors.llm._ledger import ledger_child_spec
from actors.llm._ledger_lock import LedgerUnavailable
from actors.llm._messages import Reservation, Reserve, Settle, Usage
from actors.llm._shared_ledger import SharedLedgerActor
from runtime import ActorSystem, SupervisorSpec
from tests.redis_server import RedisServer

DAY = "2026-11-30"
CENT = 10_000_000  # nano-USD


async def _journal(day: str) -> DaySeed:
    return DaySeed(0)


async def _open_epoch(link: RedisLink) -> None:
    """A first use of the ledger waits for the journals (no epoch yet): done once, up front."""
    opener = SharedLedger(link, "opener", _journal, LedgerLimits(daily_cost_limit=CENT))
    assert (await opener.reserve("warm", 0, "p", DAY)).granted
    assert await opener.release("warm")


async def test_an_allowance_takes_at_most_a_quarter_of_the_room_and_counts_as_held(
    link: RedisLink,
) -> None:
    await _open_epoch(link)
    a = SharedLedger(link, "a", _journal, LedgerLimits(daily_cost_limit=100 * CENT))
    b = SharedLedger(link, "b", _journal, LedgerLimits(daily_cost_limit=100 * CENT))
    # $0.40 is more than a quarter of $1.00: nothing free; $0.20 is not.
    assert await a.allow("alw", "p", DAY, charge=0, out=0, carry=0, want=40 * CENT,
                         min_free=CENT, call=1) == (0, 0)
    assert await a.allow("alw", "p", DAY, charge=0, out=0, carry=0, want=20 * CENT,
                         min_free=CENT, call=2) == (20 * CENT, 20 * CENT)
    assert await a.totals(DAY) == (0, 20 * CENT)
    # $0.05 charged, $0.10 drawn by open requests, $0.10 still free (kept while the call runs).
    assert await a.allow("alw", "p", DAY, charge=5 * CENT, out=10 * CENT, carry=10 * CENT,
                         want=20 * CENT, min_free=CENT, call=3) == (30 * CENT, 20 * CENT)
    assert await a.totals(DAY) == (5 * CENT, 30 * CENT)
    # An older call run late changes nothing.
    assert await a.allow("alw", "p", DAY, charge=5 * CENT, out=0, carry=0, want=0, min_free=0,
                         call=1) == (-1, 0)
    assert await a.totals(DAY) == (5 * CENT, 30 * CENT)
    assert await b.reserve("b1", 60 * CENT, "p", DAY) == ReserveResult(True, 60 * CENT)
    # Near the limit the free part would be below one request ($0.10): none, only what is out.
    # Near the limit ($0.35 left, less than 4 x $0.20): nothing free, only what is out.
    assert await a.allow("alw", "p", DAY, charge=0, out=10 * CENT, carry=0, want=20 * CENT,
                         min_free=CENT, call=4) == (10 * CENT, 0)
    # Everyone else reserves exactly up to the limit, per request.
    assert await b.reserve("b2", 25 * CENT + 1, "p", DAY) == ReserveResult(
        False, 0, ReserveRefused("daily", 5 * CENT, 70 * CENT))
    assert await b.reserve("b2", 25 * CENT, "p", DAY) == ReserveResult(True, 25 * CENT)
    assert await a.allow("alw", "p", DAY, charge=0, out=10 * CENT, carry=0, want=CENT,
                         min_free=1, call=5) == (10 * CENT, 0)


async def test_the_charges_of_a_resize_whose_answer_was_lost_count_exactly_once(
    link: RedisLink,
) -> None:
    await _open_epoch(link)
    a = SharedLedger(link, "a", _journal, LedgerLimits(daily_cost_limit=100 * CENT))

    async def resize(call: int, charge: int, unsure: list[tuple[int, int]]) -> tuple[int, int]:
        granted = await a.allow("alw", "p", DAY, charge=charge, out=0, carry=0, want=0,
                                min_free=0, call=call, unsure=unsure)
        assert granted is not None
        return granted

    assert await resize(1, 2 * CENT, []) == (0, 0)  # ran, but its worker never heard
    assert await resize(2, 0, [(1, 2 * CENT)]) == (0, 0)  # it ran: not charged again
    assert await a.totals(DAY) == (2 * CENT, 0)
    # Call 3 was written, then its connection broke: call 4 charges it, and it never runs late.
    assert await resize(4, CENT, [(3, 5 * CENT)]) == (0, 0)
    assert await resize(3, 5 * CENT, []) == (-1, 0)
    assert await a.totals(DAY) == (8 * CENT, 0)


async def test_a_dead_workers_allowance_is_charged_at_its_ttl_and_the_day_stays_exact(
    cluster_config: ClusterConfig,
) -> None:
    config = cluster_config.model_copy(update={"reservation_ttl": 0.3})
    limits = LedgerLimits(daily_cost_limit=100 * CENT)
    async with RedisLink(config) as link:
        dead = SharedLedger(link, "dead", _journal, limits)
        other = SharedLedger(link, "other", _journal, limits)
        await _open_epoch(link)
        assert await dead.allow("alw", "p", DAY, charge=0, out=0, carry=0, want=20 * CENT,
                                min_free=CENT, call=1) == (20 * CENT, 20 * CENT)
        assert await dead.allow("alw", "p", DAY, charge=3 * CENT, out=0, carry=17 * CENT,
                                want=20 * CENT, min_free=CENT, call=2) == (20 * CENT, 20 * CENT)
        # The worker dies (nobody renews its allowance): $0.20 held until the TTL...
        assert (await other.reserve("o1", 78 * CENT, "p", DAY)).granted is False
        await anyio.sleep(0.4)
        # ... then charged, not given back: its requests may have been billed (review 7).
        assert await other.reserve("o1", 78 * CENT, "p", DAY) == ReserveResult(
            False, 0, ReserveRefused("daily", 23 * CENT, 0))
        assert await other.reserve("o1", 77 * CENT, "p", DAY) == ReserveResult(True, 77 * CENT)
        assert await other.totals(DAY) == (23 * CENT, 77 * CENT)


async def test_redis_restarted_empty_reseeds_an_allowance_from_the_workers_journal(
    redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    limits = LedgerLimits(daily_cost_limit=100 * CENT)
    holder_journal = DaySeed(3 * CENT, {"p": 3 * CENT}, [OpenReservation("alw", 20 * CENT, "p")])

    async def journal(day: str) -> DaySeed:
        return holder_journal

    async with RedisLink(cluster_config) as link:
        holder = SharedLedger(link, "holder", journal, limits)
        other = SharedLedger(link, "other", _journal, limits)
        await _open_epoch(link)
        assert await holder.allow("alw", "p", DAY, charge=0, out=0, carry=0, want=20 * CENT,
                                  min_free=CENT, call=1) == (20 * CENT, 20 * CENT)
        redis_server.stop()
        redis_server.start()

        async def holder_timer() -> None:
            await anyio.sleep(cluster_config.journal_interval)
            assert await holder.seed_day_total(DAY, holder_journal) is True

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(holder_timer)
                first = await other.reserve("o1", 80 * CENT, "p", DAY)
        assert first == ReserveResult(False, 0, ReserveRefused("daily", 3 * CENT, 20 * CENT))
        assert await other.reserve("o1", 77 * CENT, "p", DAY) == ReserveResult(True, 77 * CENT)
        # The next resize replaces the re-declared hold (it does not add to it).
        assert await holder.allow("alw", "p", DAY, charge=0, out=0, carry=0, want=0,
                                  min_free=0, call=2) == (0, 0)
        assert await other.totals(DAY) == (3 * CENT, 77 * CENT)


def _worker(tmp_path: Path, link: RedisLink, name: str, daily: float) -> SharedLedgerActor:
    # $0.01 per output token: a reservation of 1 max token holds one cent.
    catalog = ModelCatalog(prices={"m": ModelPrice(input=0.0, output=10_000.0)}, builtin=False)
    cost = CostConfig(db_path=str(tmp_path / f"{name}.sqlite3"), daily_cost_limit=daily)
    return SharedLedgerActor(cost, catalog, link=link, instance_id=name,
                             now=lambda: datetime(2026, 11, 30, 12, tzinfo=UTC))


def _spec(tmp_path: Path, link: RedisLink, name: str, daily: float) -> SupervisorSpec:
    catalog = ModelCatalog(prices={"m": ModelPrice(input=0.0, output=10_000.0)}, builtin=False)
    cost = CostConfig(db_path=str(tmp_path / f"{name}.sqlite3"), daily_cost_limit=daily)
    return SupervisorSpec("root", [ledger_child_spec(
        cost, catalog, actor=lambda: _worker(tmp_path, link, name, daily))])


async def _until_held(ledger: SharedLedger, held: int) -> None:
    for _ in range(200):  # bounded: 10 s
        if (await ledger.totals(DAY))[1] == held:
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"Redis never held {held}: {await ledger.totals(DAY)}")


async def test_a_worker_grants_from_its_allowance_while_redis_is_frozen_then_fails_closed(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    # A slow timer: the allowance is not given back as idle while the test draws from it.
    config = cluster_config.model_copy(update={"connect_timeout": 0.3, "op_timeout": 0.3,
                                               "journal_interval": 5.0})
    async with RedisLink(cluster_config) as fast, RedisLink(config) as link:
        await _open_epoch(fast)  # its short gathering window, not the worker's
        observer = SharedLedger(fast, "observer", _journal, LedgerLimits())
        async with ActorSystem(_spec(tmp_path, link, "w", 1.00)) as system:
            ledger = system.ref("ledger")
            first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
            # Its first reserve went to Redis and asked for an allowance of 8 reservations.
            await _until_held(observer, 9 * CENT)
            held = [first]
            redis_server.pause()
            try:
                for index in range(1, 9):  # from the allowance: no call
                    held.append(await ledger.ask(Reserve(f"r{index}", "p", "m", 0, 1),
                                                 timeout=10))
                with pytest.raises(LedgerUnavailable):  # empty: fails closed, typed
                    await ledger.ask(Reserve("r9", "p", "m", 0, 1), timeout=10)
            finally:
                redis_server.resume()
            # The first (reserved in Redis, settled there behind the answer) is charged a tenth.
            assert await ledger.ask(Settle(first.id, Usage(), 0.001), timeout=10) == 0.001
            for _ in range(200):  # bounded: 10 s
                if (await observer.totals(DAY))[0] == CENT // 10:
                    break
                await anyio.sleep(0.05)
            for reservation in held[1:]:
                assert await ledger.ask(Settle(reservation.id, Usage(), 0.01), timeout=10) == 0.01
        # Stopped: its charges pushed, its allowance given back.
        assert await observer.totals(DAY) == (8 * CENT + CENT // 10, 0)


async def test_a_stop_while_redis_is_slow_still_pushes_the_charges_and_gives_the_allowance_back(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    # Its first try at stopping times out (0.6 s, frozen 1 s more): the next one lands, and
    # the resize that timed out before it, run late on its old connection, counts once.
    config = cluster_config.model_copy(update={"connect_timeout": 0.3, "op_timeout": 0.3,
                                               "journal_interval": 5.0})
    async with RedisLink(cluster_config) as fast, RedisLink(config) as link:
        await _open_epoch(fast)
        observer = SharedLedger(fast, "observer", _journal, LedgerLimits())
        async with ActorSystem(_spec(tmp_path, link, "w", 1.00)) as system:
            ledger = system.ref("ledger")
            first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
            await _until_held(observer, 9 * CENT)
            assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
            await _until_held(observer, 8 * CENT)  # r0 settled in Redis
            drawn = [await ledger.ask(Reserve(f"r{index}", "p", "m", 0, 1), timeout=10)
                     for index in (1, 2, 3)]
            redis_server.pause()
            try:
                for reservation in drawn:  # charged locally, pushed by a resize that hangs
                    assert await ledger.ask(Settle(reservation.id, Usage(), 0.01),
                                            timeout=10) == 0.01
                # The resize times out (it ran or not: its charge is unsure) and breaks the
                # connection: the stop's first try hangs in connecting and is never written.
                await anyio.sleep(0.8)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(system.stop)
                    await anyio.sleep(1.0)
                    redis_server.resume()
            finally:
                redis_server.resume()
        assert await observer.totals(DAY) == (4 * CENT, 0)


async def test_two_workers_allowances_never_pass_the_daily_limit_and_fall_back_near_it(
    tmp_path: Path, cluster_config: ClusterConfig,
) -> None:
    async with RedisLink(cluster_config) as link:
        observer = SharedLedger(link, "observer", _journal, LedgerLimits())
        granted: list[str] = []
        async with ActorSystem(_spec(tmp_path, link, "a", 0.40)) as one, \
                ActorSystem(_spec(tmp_path, link, "b", 0.40)) as two:
            ledgers = [one.ref("ledger"), two.ref("ledger")]

            async def ask(index: int) -> None:
                ledger = ledgers[index % 2]
                try:
                    reservation = await ledger.ask(Reserve(f"r{index}", "p", "m", 0, 1),
                                                   timeout=10)
                except LLMCostLimitError:  # refused: the limit
                    return
                granted.append(reservation.request_id)
                await anyio.sleep(0.01)
                await ledger.ask(Settle(reservation.id, Usage(), 0.01), timeout=10)

            for round_ in range(6):  # bounded: 6 rounds of 20 concurrent asks
                async with anyio.create_task_group() as tasks:
                    for index in range(20):
                        tasks.start_soon(ask, round_ * 20 + index)
        # $0.40 at one cent each: exactly 40 granted across both workers, none more.
        assert len(granted) == 40
        assert await observer.totals(DAY) == (40 * CENT, 0)


async def test_a_restarted_empty_redis_gets_a_workers_allowance_back_from_its_journal(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    async with RedisLink(cluster_config) as link:
        await _open_epoch(link)
        other = SharedLedger(link, "other", _journal, LedgerLimits(daily_cost_limit=100 * CENT))
        async with ActorSystem(_spec(tmp_path, link, "w", 1.00)) as system:
            ledger = system.ref("ledger")
            first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
            await _until_held(other, 9 * CENT)  # r0 and an allowance of 8 cents
            drawn = [await ledger.ask(Reserve(f"r{index}", "p", "m", 0, 1), timeout=10)
                     for index in (1, 2)]
            redis_server.stop()
            redis_server.start()  # empty: the allowance lives only in the worker now
            # The worker's timer re-declares r0 and its allowance (r1 and r2 drew from it)
            # before the day grants money again: $0.98 more would pass the limit.
            refused = await other.reserve("o1", 98 * CENT, "p", DAY)
            assert (refused.granted, refused.refused is not None
                    and refused.refused.limit) == (False, "daily")
            assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
            for _ in range(200):  # bounded: 10 s (r0's settle is shared behind its answer)
                with contextlib.suppress(ClusterUnavailable):  # a connection from before
                    if (await other.totals(DAY))[0] == CENT:
                        break
                await anyio.sleep(0.05)
            for reservation in drawn:
                assert await ledger.ask(Settle(reservation.id, Usage(), 0.01), timeout=10) == 0.01
        assert await other.totals(DAY) == (3 * CENT, 0)
