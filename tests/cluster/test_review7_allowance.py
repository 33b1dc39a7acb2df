"""The seventh review of money held in Redis: a worker cut off from Redis past its allowance's
TTL, and reservations Redis expires unsettled (charged what they held, as the local ledger does),
each on a real redis-server."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from actors.cluster import (
    ClusterConfig,
    LedgerLimits,
    RedisLink,
    ReserveRefused,
    ReserveResult,
    SettleResult,
    SharedLedger,
)
from actors.llm import CostConfig, ModelCatalog, ModelPrice
from actors.llm._ledger import ledger_child_spec
from actors.llm._ledger_lock import LedgerUnavailable
from actors.llm._messages import Reservation, Reserve, Settle, Usage
from actors.llm._shared_ledger import SharedLedgerActor
from runtime import ActorSystem, SupervisorSpec
from tests.cluster.reply_proxy import ReplyProxy
from tests.cluster.test_allowance import CENT, DAY, _journal, _open_epoch, _spec, _until_held
from tests.redis_server import RedisServer


async def _settled(ledger: SharedLedger, settled: int, held: int) -> None:
    for _ in range(200):  # bounded: 10 s
        if await ledger.totals(DAY) == (settled, held):
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"Redis never read {(settled, held)}: {await ledger.totals(DAY)}")


async def test_a_worker_cut_off_past_its_allowances_ttl_never_lets_the_day_overshoot(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    # a holds 3 open requests drawn from its allowance of $0.08 when its link is cut; Redis
    # expires the allowance (TTL 2 s) while b spends the day ($0.40) to its end; then a's
    # requests settle and its link comes back. Before: the expired allowance was given back, b
    # spent $0.39 and the day read $0.43. Now the expired hold is charged (a's requests may have
    # been billed): b spends $0.31, and when a comes back its hold is replaced by what it spent.
    proxy = ReplyProxy(redis_server.port)
    ttl = {"reservation_ttl": 2.0}
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        a_config = cluster_config.model_copy(update={
            **ttl, "redis_url": proxy.url, "connect_timeout": 0.3, "op_timeout": 0.3,
            "journal_interval": 5.0})  # no tick during the test: one renewal, the first grow
        async with RedisLink(cluster_config.model_copy(update=ttl)) as fast, \
                RedisLink(a_config) as a_link:
            await _open_epoch(fast)
            b = SharedLedger(fast, "b", _journal, LedgerLimits(daily_cost_limit=40 * CENT))
            async with ActorSystem(_spec(tmp_path, a_link, "a", 0.40)) as system:
                ledger = system.ref("ledger")
                first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
                await _until_held(b, 9 * CENT)  # r0 and an allowance of 8 cents
                assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
                await _settled(b, CENT, 8 * CENT)
                drawn = [await ledger.ask(Reserve(f"r{index}", "p", "m", 0, 1), timeout=10)
                         for index in (1, 2, 3)]  # from the allowance: no call
                proxy.freeze()
                try:
                    await anyio.sleep(2.2)  # past the allowance's TTL in Redis
                    granted = 0
                    for index in range(45):  # bounded: more than the day holds
                        result = await b.reserve(f"b{index}", CENT, "p", DAY)
                        if not result.granted:
                            break
                        granted += 1
                        assert (await b.settle(f"b{index}", CENT, "p", DAY)).charged
                    for reservation in drawn:  # a's requests end: charged locally
                        assert await ledger.ask(Settle(reservation.id, Usage(), 0.01),
                                                timeout=10) == 0.01
                    await anyio.sleep(0.8)  # their resize times out: its charge is unsure
                finally:
                    proxy.thaw()
                # b spent what was left beside a's expired hold, charged: 40 - 1 - 8 cents.
                assert granted == 31
            # a stopped: its charges pushed once, its hold replaced by them and given back.
            assert await b.totals(DAY) == (CENT + 31 * CENT + 3 * CENT, 0)
        group.cancel_scope.cancel()


async def test_a_worker_stops_drawing_from_its_allowance_before_redis_can_expire_it(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    # The renewal's answer is read 1.2 s late (TTL 2 s): counted from the answer, a worker drew
    # until 2.2 s after the renewal was sent, past its expiry in Redis (2.0 s). Counted from the
    # send, with a tenth of the TTL as margin, it stops at 1.8 s.
    proxy = ReplyProxy(redis_server.port)
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        a_config = cluster_config.model_copy(update={
            "reservation_ttl": 2.0, "redis_url": proxy.url, "connect_timeout": 0.3,
            "op_timeout": 2.0, "journal_interval": 5.0})
        async with RedisLink(cluster_config) as fast, RedisLink(a_config) as a_link:
            await _open_epoch(fast)
            observer = SharedLedger(fast, "observer", _journal, LedgerLimits())
            async with ActorSystem(_spec(tmp_path, a_link, "a", 1.00)) as system:
                ledger = system.ref("ledger")
                first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
                await _until_held(observer, 9 * CENT)
                assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
                await _settled(observer, CENT, 8 * CENT)
                one = await ledger.ask(Reserve("r1", "p", "m", 0, 1), timeout=10)
                proxy.delay = 1.2
                # The settle pushes its charge with a resize (sent now, answered 1.2 s later).
                assert await ledger.ask(Settle(one.id, Usage(), 0.01), timeout=10) == 0.01
                sent = time.monotonic()
                await anyio.sleep(1.4)  # the renewal's answer was read
                proxy.freeze()  # no later renewal reaches Redis
                try:
                    # The renewal's free part is drawn from while it is fresh...
                    await ledger.ask(Reserve("r2", "p", "m", 0, 1), timeout=10)
                    await anyio.sleep(sent + 1.85 - time.monotonic())
                    # ... and no more from 1.8 s after it was sent: this one asks Redis.
                    with pytest.raises(LedgerUnavailable):
                        await ledger.ask(Reserve("r3", "p", "m", 0, 1), timeout=10)
                finally:
                    proxy.thaw()
                    proxy.delay = 0.0
        group.cancel_scope.cancel()


async def test_a_reservation_redis_expires_unsettled_is_charged_and_a_late_settle_adds_more(
    cluster_config: ClusterConfig,
) -> None:
    config = cluster_config.model_copy(update={"reservation_ttl": 0.3})
    limits = LedgerLimits(daily_cost_limit=20 * CENT)
    async with RedisLink(config) as link:
        await _open_epoch(link)
        ledger = SharedLedger(link, "w", _journal, limits)
        for request, cents in (("r1", 5), ("r2", 3), ("r3", 1)):
            assert (await ledger.reserve(request, cents * CENT, "p", DAY)).granted
        await anyio.sleep(0.4)
        # Expired unsettled: charged what they held (the upstream may have billed them).
        assert await ledger.reserve("r4", 12 * CENT, "p", DAY) == ReserveResult(
            False, 0, ReserveRefused("daily", 9 * CENT, 0))
        assert await ledger.totals(DAY) == (9 * CENT, 0)
        assert await ledger.totals(DAY, "p") == (9 * CENT, 0)
        # A late settle adds what it cost beyond the charge, once; less is not given back (as
        # in the local ledger, which journaled the charge).
        assert await ledger.settle("r1", 6 * CENT, "p", DAY) == SettleResult(True, True, 5 * CENT)
        assert await ledger.settle("r1", 6 * CENT, "p", DAY) == SettleResult(False, False, 0)
        assert await ledger.settle("r2", CENT, "p", DAY) == SettleResult(True, True, 3 * CENT)
        # A late release changes nothing: the charge stands.
        assert await ledger.release("r3", DAY) is False
        assert await ledger.totals(DAY, "p") == (10 * CENT, 0)
        assert await ledger.reserve("r4", 11 * CENT, "p", DAY) == ReserveResult(
            False, 0, ReserveRefused("daily", 10 * CENT, 0))
        assert (await ledger.reserve("r4", 10 * CENT, "p", DAY)).granted
        assert await ledger.release("r4", DAY)
        # Bounded: the record of what expired goes with the settled marks (2 x the TTL).
        assert await link.client.hlen(link.key("ledger", "lapsed")) == 1
        await anyio.sleep(0.7)
        assert (await ledger.reserve("r5", CENT, "p", DAY)).granted
        assert await ledger.release("r5", DAY)
        assert await link.client.hlen(link.key("ledger", "lapsed")) == 0
        keys = [key async for key in link.client.scan_iter()]
        assert [key for key in keys if await link.client.pttl(key) < 0] == []


async def test_a_dead_workers_allowance_is_charged_at_its_ttl_and_taken_back_if_it_returns(
    cluster_config: ClusterConfig,
) -> None:
    config = cluster_config.model_copy(update={"reservation_ttl": 0.3})
    limits = LedgerLimits(daily_cost_limit=100 * CENT)
    async with RedisLink(config) as link:
        await _open_epoch(link)
        worker = SharedLedger(link, "worker", _journal, limits)
        other = SharedLedger(link, "other", _journal, limits)
        assert await worker.allow("alw", "p", DAY, charge=0, out=0, carry=0, want=20 * CENT,
                                  min_free=CENT, call=1) == (20 * CENT, 20 * CENT)
        await anyio.sleep(0.4)  # not renewed: what it held is charged, not given back
        assert await other.reserve("o1", 81 * CENT, "p", DAY) == ReserveResult(
            False, 0, ReserveRefused("daily", 20 * CENT, 0))
        assert await other.totals(DAY) == (20 * CENT, 0)
        assert (await other.reserve("o1", 80 * CENT, "p", DAY)).granted
        assert await other.release("o1", DAY)
        # It was only cut off: it drew 6 cents, spent 4 (2 still out); its hold comes back as it.
        assert await worker.allow("alw", "p", DAY, charge=4 * CENT, out=2 * CENT, carry=0,
                                  want=0, min_free=0, call=2) == (2 * CENT, 0)
        assert await other.totals(DAY) == (4 * CENT, 2 * CENT)
        assert await worker.allow("alw", "p", DAY, charge=2 * CENT, out=0, carry=0,
                                  want=0, min_free=0, call=3) == (0, 0)
        assert await other.totals(DAY) == (6 * CENT, 0)


async def test_a_drawn_reservation_the_local_ledger_expires_is_charged_in_redis_too(
    tmp_path: Path, cluster_config: ClusterConfig,
) -> None:
    # Its settle never came: the local ledger charges what it held (0.5 s here), and so does
    # Redis, through the allowance it drew from; a late settle adds what it cost beyond, once.
    config = cluster_config.model_copy(update={"reservation_ttl": 1.0})
    async with RedisLink(config) as link:
        await _open_epoch(link)
        observer = SharedLedger(link, "observer", _journal, LedgerLimits())
        catalog = ModelCatalog(prices={"m": ModelPrice(input=0.0, output=10_000.0)},
                               builtin=False)
        cost = CostConfig(db_path=str(tmp_path / "w.sqlite3"), daily_cost_limit=1.00)

        def worker() -> SharedLedgerActor:
            return SharedLedgerActor(cost, catalog, link=link, instance_id="w",
                                     now=lambda: datetime(2026, 11, 30, 12, tzinfo=UTC),
                                     reservation_ttl=0.5, sweep_interval=0.1)

        spec = SupervisorSpec("root", [ledger_child_spec(cost, catalog, actor=worker)])
        async with ActorSystem(spec) as system:
            ledger = system.ref("ledger")
            first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
            lost: Reservation = await ledger.ask(Reserve("r1", "p", "m", 0, 1), timeout=10)
            # r1 drew from the allowance: Redis holds r0 and the allowance only.
            assert await link.client.hlen(link.key("ledger", "resv")) == 2
            assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
            await _settled(observer, 2 * CENT, 0)  # r1's cent charged, the allowance idle
            # Late: it cost 3 cents, 2 more than charged.
            assert await ledger.ask(Settle(lost.id, Usage(), 0.03), timeout=10) == 0.02
            await _settled(observer, 4 * CENT, 0)
        assert await observer.totals(DAY) == (4 * CENT, 0)
