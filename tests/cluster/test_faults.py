"""The fault policy: Redis stopped, frozen, restarted empty; typed errors, then recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as redis
import redis.exceptions as redis_errors

from actors.chat import ConversationUnavailable, SharedTurnLeases
from actors.cluster import (
    ClusterConfig,
    ClusterHealth,
    ClusterUnavailable,
    ConversationLeases,
    DaySeed,
    LedgerLimits,
    OpenReservation,
    RedisLink,
    ReserveRefused,
    ReserveResult,
    SharedLedger,
    SharedRateWindow,
)
from actors.llm import CostConfig, LLMCostLimitError, ModelCatalog, ModelPrice
from actors.llm._ledger import ledger_child_spec
from actors.llm._messages import Reservation, Reserve, Settle, Usage
from actors.llm._shared_ledger import SharedLedgerActor
from runtime import ActorSystem, SupervisorSpec
from tests.redis_server import RedisServer

DAY = "2026-11-30"
CENT = 10_000_000
FAST = {"connect_timeout": 0.3, "op_timeout": 0.3}
BOUND = 0.6 + 1.0  # connect + op timeout, plus scheduling slack of a loaded test machine
#: The link's timing on asyncio's loop and on uvloop's (the server's): they order timers and I/O
#: differently within an iteration.
BOTH_LOOPS = pytest.mark.parametrize("anyio_backend", [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])


async def _journal(day: str) -> DaySeed:
    return DaySeed(0)


Calls = list[tuple[str, Callable[[], Awaitable[object]]]]


async def _parts(link: RedisLink) -> tuple[SharedLedger, SharedRateWindow, ConversationLeases,
                                            Calls]:
    """A ledger (one reservation made while Redis is fine), a rate window and leases on
    ``link``, with the call of each that a fault must refuse, by its operation's name."""
    ledger = SharedLedger(link, "a", _journal, LedgerLimits(daily_cost_limit=10 * CENT))
    window = SharedRateWindow(link, "p", requests_per_minute=5, tokens_per_minute=None)
    leases = ConversationLeases(link, "a")
    assert (await ledger.reserve("r1", CENT, "openai", DAY)).granted
    return ledger, window, leases, [
        ("ledger reserve", lambda: ledger.reserve("r2", CENT, "openai", DAY)),
        ("rate admission", lambda: window.admit()),
        ("lease acquire", lambda: leases.acquire("c", timeout=1.0)),
    ]


async def test_every_part_fails_closed_with_a_typed_error_while_redis_is_stopped_then_recovers(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update=FAST)
    async with RedisLink(config) as link:
        ledger, window, leases, calls = await _parts(link)
        redis_server.stop()
        for operation, call in calls:
            with anyio.fail_after(BOUND), pytest.raises(ClusterUnavailable) as caught:
                await call()
            error = caught.value
            assert (error.operation, error.retryable, error.error_type) == (
                operation, True, "unavailable")
            assert str(error) == f"shared state unavailable during {operation}: connection failed"
        assert await link.ping() == ClusterHealth(False, None, "connection failed")
        redis_server.start()  # same port, empty: scripts are reloaded after NOSCRIPT
        health = await link.ping()
        assert (health.ok, health.error) == (True, None)
        assert health.latency_ms is not None
        assert (await window.admit()).admitted is True
        assert await leases.acquire("c", timeout=1.0) is not None
        assert await ledger.reserve("r2", CENT, "openai", DAY) == ReserveResult(True, CENT)


async def test_a_redis_that_refuses_writes_or_is_busy_fails_closed_with_a_typed_error(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update=FAST)
    async with RedisLink(config) as link:
        ledger, window, leases, calls = await _parts(link)
        turns = SharedTurnLeases(leases, timeout=1.0)

        async def refused_with(reason: str) -> list[str]:
            raised: list[str] = []
            for operation, call in calls:
                with anyio.fail_after(BOUND), pytest.raises(ClusterUnavailable) as caught:
                    await call()
                assert (caught.value.operation, caught.value.error_type) == (
                    operation, "unavailable")
                raised.append(str(caught.value))
            with anyio.fail_after(BOUND), pytest.raises(ConversationUnavailable) as turn:
                async with turns.hold("c"):
                    pass
            assert turn.value.error_type == "unavailable"
            assert str(turn.value.__cause__) == (
                f"shared state unavailable during lease acquire: {reason}")
            return raised

        # maxmemory reached and nothing may be evicted: Redis refuses every script that writes.
        await link.client.config_set("maxmemory-policy", "noeviction")
        await link.client.config_set("maxmemory", "1")
        assert await refused_with("server out of memory") == [
            f"shared state unavailable during {operation}: server out of memory"
            for operation, _ in calls]
        await link.client.config_set("maxmemory", "0")

        # A script running past busy-reply-threshold: Redis answers BUSY to everything else.
        await link.client.config_set("busy-reply-threshold", "100")
        blocker = redis.Redis.from_url(redis_server.url)
        try:
            async with anyio.create_task_group() as group:
                async def run_forever() -> None:
                    with pytest.raises(redis_errors.ResponseError):  # killed below
                        await blocker.eval("while true do end", 0)

                group.start_soon(run_forever)
                await anyio.sleep(0.2)
                try:
                    assert await refused_with("server busy") == [
                        f"shared state unavailable during {operation}: server busy"
                        for operation, _ in calls]
                finally:
                    with anyio.fail_after(BOUND):
                        await link.client.script_kill()
        finally:
            await blocker.aclose()

        assert (await window.admit()).admitted is True
        assert (await leases.acquire("c", timeout=1.0)).token == 1
        assert await ledger.reserve("r2", CENT, "openai", DAY) == ReserveResult(True, CENT)


async def _four_at_once(call: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Four concurrent ``call()``, all ended within :data:`BOUND`."""
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(call)


@BOTH_LOOPS
async def test_a_frozen_redis_answers_timed_out_within_the_op_timeout(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update=FAST)
    async with RedisLink(config) as link:
        # Room for the 4 admissions Redis runs when it resumes (a caller that timed out cannot
        # tell whether its script ran: counted, conservatively) and one more.
        window = SharedRateWindow(link, "p", requests_per_minute=6, tokens_per_minute=None)
        assert (await window.admit()).admitted is True
        redis_server.pause()
        failures: list[str] = []

        async def admit() -> None:
            with pytest.raises(ClusterUnavailable) as raised:
                await window.admit()
            failures.append(str(raised.value))

        try:
            await _four_at_once(admit)  # every call waiting on the stuck connection fails
        finally:
            redis_server.resume()
        assert failures == ["shared state unavailable during rate admission: timed out"] * 4
        assert (await window.admit()).admitted is True


@BOTH_LOOPS
async def test_calls_that_need_a_new_connection_to_a_frozen_redis_fail_together(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    # Connections are made one at a time: the calls queued behind a connect that timed out fail
    # with it, instead of each trying its own (four calls would take four bounds).
    config = cluster_config.model_copy(update=FAST)
    redis_server.pause()
    try:
        async with RedisLink(config) as link:
            reasons: list[str] = []

            async def call() -> None:
                health = await link.ping()  # no connection yet: each call needs one
                reasons.append(f"{health.ok} {health.error}")

            await _four_at_once(call)
    finally:
        redis_server.resume()
    assert reasons == ["False timed out"] * 4


@BOTH_LOOPS
async def test_a_reply_read_late_because_this_process_was_busy_is_not_an_outage(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    # Under overload the event loop runs late: a reply that Redis sent in time is read after the
    # call's deadline. A deadline per call failed such calls closed (the turn ended
    # `unavailable`, /health said failing); the connection answered all along.
    config = cluster_config.model_copy(update=FAST)
    async with RedisLink(config) as link:
        await link.server_time()  # connected
        call = asyncio.ensure_future(link.server_time())
        for _ in range(3):  # the call writes its command (a tick later)
            await asyncio.sleep(0)
        # The loop blocked (an overloaded worker), Redis answers meanwhile.
        time.sleep(3 * (FAST["connect_timeout"] + FAST["op_timeout"]))  # noqa: ASYNC251
        assert await call > 0
        assert (await link.ping()).ok is True


async def test_a_restarted_empty_redis_is_reseeded_from_each_instance_journal(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    journal_seed = DaySeed(6 * CENT, {"openai": 6 * CENT},
                           [OpenReservation("held", 3 * CENT, "openai")])
    reads: list[str] = []

    async def journal(day: str) -> DaySeed:
        reads.append(day)
        return journal_seed

    async with RedisLink(cluster_config) as link:
        ledger = SharedLedger(link, "a", journal, LedgerLimits(daily_cost_limit=10 * CENT))
        assert await ledger.reserve("r1", CENT, "openai", DAY) == ReserveResult(True, CENT)
        redis_server.stop()
        redis_server.start()
        # The journal (settled $0.06, $0.03 held) is counted again: only $0.01 is left.
        assert await ledger.reserve("r2", 2 * CENT, "openai", DAY) == ReserveResult(
            False, 0, ReserveRefused("daily", 6 * CENT, 3 * CENT))
        assert await ledger.reserve("r2", CENT, "openai", DAY) == ReserveResult(True, CENT)
        assert reads == [DAY, DAY]
        settled = await ledger.settle("r1", CENT, "openai", DAY)  # lost with the restart
        assert (settled.charged, settled.late) == (True, True)
        assert await ledger.totals(DAY) == (7 * CENT, 4 * CENT)


async def test_after_redis_restarted_empty_no_money_is_granted_before_every_journal_is_back(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    limits = LedgerLimits(daily_cost_limit=10 * CENT)
    spent_by_b = DaySeed(8 * CENT, {"openai": 8 * CENT})
    journal_of_b = [DaySeed(0)]  # b's SQLite journal: empty, then the $0.08 it settled

    async def journal_b(day: str) -> DaySeed:
        return journal_of_b[-1]

    async with RedisLink(cluster_config) as link:
        a = SharedLedger(link, "a", _journal, limits)
        b = SharedLedger(link, "b", journal_b, limits)
        assert await b.reserve("b1", 8 * CENT, "openai", DAY) == ReserveResult(True, 8 * CENT)
        assert (await b.settle("b1", 8 * CENT, "openai", DAY)).charged
        journal_of_b.append(spent_by_b)
        redis_server.stop()
        redis_server.start()  # empty: b's $0.08 lives only in b's journal now

        async def b_timer() -> None:
            # b is idle: only its timer (SharedLedgerActor's, every journal_interval) brings
            # its journal back, after a's first reserve has noticed the loss.
            await anyio.sleep(cluster_config.journal_interval)
            assert await b.seed_day_total(DAY, spent_by_b) is True

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(b_timer)
                first = await a.reserve("a1", 5 * CENT, "openai", DAY)
        # Granted at once, a would have spent $0.05 of a day that already holds $0.08.
        assert first == ReserveResult(False, 0, ReserveRefused("daily", 8 * CENT, 0))
        assert await a.reserve("a1", 2 * CENT, "openai", DAY) == ReserveResult(True, 2 * CENT)
        assert await a.totals(DAY) == (8 * CENT, 2 * CENT)


async def test_a_workers_reservation_passes_the_shared_limits_before_its_seed_can_carry_it(
    tmp_path: Path, cluster_config: ClusterConfig
) -> None:
    # $0.05 per output token: one token is this worker's whole worst case.
    catalog = ModelCatalog(prices={"m": ModelPrice(input=0.0, output=50_000.0)}, builtin=False)
    cost = CostConfig(db_path=str(tmp_path / "w.sqlite3"), daily_cost_limit=0.10)
    limits = LedgerLimits(daily_cost_limit=10 * CENT)

    async def journal_b(day: str) -> DaySeed:
        return DaySeed(0)

    async with RedisLink(cluster_config) as link:
        b = SharedLedger(link, "b", journal_b, limits)  # another worker: $0.08 spent today
        assert (await b.reserve("b1", 8 * CENT, "p", DAY)).granted
        assert (await b.settle("b1", 8 * CENT, "p", DAY)).charged

        def worker() -> SharedLedgerActor:
            return SharedLedgerActor(cost, catalog, link=link, instance_id="w",
                                     now=lambda: datetime(2026, 11, 30, 12, tzinfo=UTC))

        spec = ledger_child_spec(cost, catalog, actor=worker)
        async with ActorSystem(SupervisorSpec("root", [spec])) as system:
            ledger = system.ref("ledger")
            # Its first reserve seeds its journal; the reservation itself is still waiting for
            # Redis's answer, so the seed must not declare it as held (it would be granted).
            with pytest.raises(LLMCostLimitError, match="shared daily limit"):
                await ledger.ask(Reserve("w1", "p", "m", 0, 1), timeout=10)
            small: Reservation = await ledger.ask(Reserve("w2", "p", "m", 0, 0), timeout=10)
            assert await ledger.ask(Settle(small.id, Usage(), 0.0), timeout=10) == 0.0
        assert await b.totals(DAY) == (8 * CENT, 0)
