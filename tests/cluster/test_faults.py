"""The fault policy: Redis stopped, frozen, restarted empty; typed errors, then recovery."""

from __future__ import annotations

import anyio
import pytest

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
from tests.redis_server import RedisServer

DAY = "2026-11-30"
CENT = 10_000_000
FAST = {"connect_timeout": 0.3, "op_timeout": 0.3}
BOUND = 0.6 + 1.0  # connect + op timeout, plus scheduling slack of a loaded test machine


async def _journal(day: str) -> DaySeed:
    return DaySeed(0)


async def test_every_part_fails_closed_with_a_typed_error_while_redis_is_stopped_then_recovers(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update=FAST)
    async with RedisLink(config) as link:
        ledger = SharedLedger(link, "a", _journal, LedgerLimits(daily_cost_limit=10 * CENT))
        window = SharedRateWindow(link, "p", requests_per_minute=5, tokens_per_minute=None)
        leases = ConversationLeases(link, "a")
        assert (await ledger.reserve("r1", CENT, "openai", DAY)).granted
        redis_server.stop()
        calls = [
            ("ledger reserve", lambda: ledger.reserve("r2", CENT, "openai", DAY)),
            ("rate admission", lambda: window.admit()),
            ("lease acquire", lambda: leases.acquire("c", timeout=1.0)),
        ]
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


async def test_a_frozen_redis_answers_timed_out_within_the_op_timeout(
    redis_server: RedisServer, cluster_config: ClusterConfig
) -> None:
    config = cluster_config.model_copy(update=FAST)
    async with RedisLink(config) as link:
        window = SharedRateWindow(link, "p", requests_per_minute=5, tokens_per_minute=None)
        assert (await window.admit()).admitted is True
        redis_server.pause()
        try:
            with anyio.fail_after(BOUND), pytest.raises(
                ClusterUnavailable,
                match=r"^shared state unavailable during rate admission: timed out$",
            ):
                await window.admit()
        finally:
            redis_server.resume()
        assert (await window.admit()).admitted is True


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
