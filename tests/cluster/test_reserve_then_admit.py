"""The reservation and the rate admission, both on Redis: the money is reserved first, then the
slot admitted, and nothing leaves before both. A refused reservation is the ledger's error (no
admission, no breaker outcome), a cancel while the reservation is pending releases it, a refused
admission releases the money and falls back.

Real redis-server, real simulators, the real runtime with its limiters and ledger on Redis. The
reservation is made slow and deterministic by a fresh ledger epoch: Redis grants no money for
``2 x journal_interval + op_timeout`` after the first journal arrives.

(An overlap of the two round trips, the provider admitting while the router reserved, was built
and measured on 2026-11-30: no gain, 1.21 against 1.22 ms p50 on a quiet machine, so it went.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.cluster import (
    ClusterConfig,
    DaySeed,
    LedgerLimits,
    RedisLink,
    SharedLedger,
    SharedRateWindow,
)
from actors.llm import LLMConfig, LLMCostLimitError, LLMRuntime, SharedState, open_runtime
from actors.llm._candidates import provider_actor_name
from actors.llm._ledger_book import nanos
from actors.llm._provider import ProviderState
from simulator.process import SimulatorProcess

HELLO = [{"role": "user", "content": "hello there"}]
DAILY = 10.0


async def _no_journal(day: str) -> DaySeed:
    return DaySeed(0)


def _config(primary: SimulatorProcess, backup: SimulatorProcess, tmp_path: Path,
            primary_rpm: int | None = None) -> LLMConfig:
    def provider(sim: SimulatorProcess, model: str, **extra: Any) -> dict[str, Any]:
        return {"kind": "openai-compatible", "base_url": sim.base_url, "model": model,
                "requires_api_key": False, "max_tokens": 64,
                "breaker": {"minimum_number_of_calls": 1}, **extra}

    return LLMConfig.model_validate({
        "providers": {"primary": provider(primary, "gpt-4o-mini",
                                          requests_per_minute=primary_rpm),
                      "backup": provider(backup, "gpt-4o")},
        "active": "primary",
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": DAILY,
                 "max_cost_per_request": 1.0},
        "request_timeout": 20,
    })


@asynccontextmanager
async def _shared(tmp_path: Path, config: ClusterConfig, primary_rpm: int | None = None
                  ) -> AsyncIterator[tuple[LLMRuntime, RedisLink, SimulatorProcess,
                                           SimulatorProcess]]:
    async with SimulatorProcess() as primary, SimulatorProcess() as backup, \
            RedisLink(config) as link:
        llm = _config(primary, backup, tmp_path, primary_rpm)
        async with open_runtime(llm, shared=SharedState(link, "w1")) as rt:
            yield rt, link, primary, backup


def _breaker_calls(rt: LLMRuntime, provider: str) -> int:
    state: ProviderState = rt.system.durable(provider_actor_name(provider))
    assert state.breaker is not None
    return state.breaker.recorded_calls


async def _stamped(window: SharedRateWindow) -> tuple[int, int]:
    """(requests, in flight) once the background stamp of the last permit has landed."""
    with anyio.fail_after(5):
        while (usage := await window.usage()).in_flight:
            await anyio.sleep(0.02)
    return usage.requests, usage.in_flight


async def _shared_open(ledger: SharedLedger, day: str) -> int:
    """What Redis holds reserved once the worker's release has landed."""
    with anyio.fail_after(5):
        while (totals := await ledger.totals(day))[1]:
            await anyio.sleep(0.02)
    return totals[1]


@pytest.mark.parametrize("admitted", [True, False], ids=["admitted", "admission-refused"])
async def test_a_refused_reservation_is_the_ledgers_error_and_no_provider_outcome(
        tmp_path: Path, cluster_config: ClusterConfig, admitted: bool) -> None:
    # With primary's only slot taken too: the refused money comes first, the admission is never
    # asked, and no breaker records anything.
    rpm = None if admitted else 1
    async with _shared(tmp_path, cluster_config, rpm) as (rt, link, primary, backup):
        day = (await rt.spend()).day
        window = SharedRateWindow(link, "primary", requests_per_minute=rpm,
                                  tokens_per_minute=None)
        if not admitted:
            filled = await window.admit()
            assert filled.permit is not None
            await window.sent(filled.permit)
        other = SharedLedger(link, "other", _no_journal,
                             LedgerLimits(daily_cost_limit=nanos(DAILY)))
        # Another instance spent all but a nano-dollar; its journal starts the epoch's gathering, so
        # this worker's reservation waits, then is refused by Redis (not by its own book).
        assert await other.seed_day_total(day, DaySeed(nanos(DAILY) - 1))
        with pytest.raises(LLMCostLimitError, match=r"^the shared daily limit would be passed"):
            await rt.chat(HELLO)
        # No slot taken (the one counted, when refused, is the other instance's); nothing left
        # for either upstream.
        assert await _stamped(window) == (0 if admitted else 1, 0)
        assert (await primary.stats())["total_requests"] == 0
        assert (await backup.stats())["total_requests"] == 0
        # Not the provider's failure: no breaker outcome, no finished call in the metrics.
        assert _breaker_calls(rt, "primary") == 0
        assert rt.health()["providers"]["primary"]["breaker"] == "closed"
        assert rt.metrics_summary()["total_requests"] == 0
        spend = await rt.spend()
        assert (spend.settled, spend.reserved, spend.open_reservations) == (0.0, 0.0, 0)
        assert await _shared_open(other, day) == 0


async def test_a_request_cancelled_while_its_reservation_is_pending_releases_it(
        tmp_path: Path, cluster_config: ClusterConfig) -> None:
    # A long gathering (2 x 1 s + 0.5 s): the cancel comes while the money is still pending.
    config = cluster_config.model_copy(update={"journal_interval": 1.0})
    async with _shared(tmp_path, config) as (rt, link, primary, backup):
        day = (await rt.spend()).day
        other = SharedLedger(link, "other", _no_journal,
                             LedgerLimits(daily_cost_limit=nanos(DAILY)))
        assert await other.seed_day_total(day, DaySeed(0))
        window = SharedRateWindow(link, "primary", requests_per_minute=None,
                                  tokens_per_minute=None)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(rt.chat, HELLO)
            with anyio.fail_after(5):  # held locally, pending in Redis
                while (await rt.spend()).open_reservations != 1:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)  # still in the epoch's gathering (2.5 s): not granted yet
            assert (await window.usage()).in_flight == 0  # the slot is asked only after
            tasks.cancel_scope.cancel()
        assert await _stamped(window) == (0, 0)
        assert (await primary.stats())["total_requests"] == 0
        assert _breaker_calls(rt, "primary") == 0
        with anyio.fail_after(5):
            while (spend := await rt.spend()).open_reservations:
                await anyio.sleep(0.02)
        assert (spend.settled, spend.reserved) == (0.0, 0.0)
        assert await _shared_open(other, day) == 0
        assert await other.totals(day) == (0, 0)


async def test_a_refused_admission_releases_the_reservation_and_falls_back(
        tmp_path: Path, cluster_config: ClusterConfig) -> None:
    async with _shared(tmp_path, cluster_config, primary_rpm=1) as (rt, link, primary, backup):
        day = (await rt.spend()).day
        window = SharedRateWindow(link, "primary", requests_per_minute=1, tokens_per_minute=None)
        filled = await window.admit()  # another instance took primary's only slot
        assert filled.permit is not None
        await window.sent(filled.permit)
        answer = await rt.chat(HELLO)
        assert [(a.provider, a.error_type) for a in answer.attempts] == [
            ("primary", "LLMRateLimitError"), ("backup", None)]
        assert (await primary.stats())["total_requests"] == 0
        assert (await backup.stats())["total_requests"] == 1
        # The refusal is primary's (its breaker records it).
        assert _breaker_calls(rt, "primary") == 1
        with anyio.fail_after(5):
            while (spend := await rt.spend()).open_reservations:
                await anyio.sleep(0.02)
        assert answer.usage.total_cost is not None
        assert spend.settled == pytest.approx(answer.usage.total_cost, abs=1e-12)
        assert spend.reserved == 0.0
        other = SharedLedger(link, "other", _no_journal, LedgerLimits())
        assert await _shared_open(other, day) == 0
        assert await other.totals(day) == (nanos(answer.usage.total_cost), 0)


async def test_over_one_providers_whole_shared_tpm_budget_it_falls_back(
        tmp_path: Path, cluster_config: ClusterConfig) -> None:
    # The shared limiter refuses what exceeds primary's whole budget as the local one does: a
    # fact about primary, so the router goes on to backup.
    async with SimulatorProcess() as primary, SimulatorProcess() as backup, \
            RedisLink(cluster_config) as link:
        llm = _config(primary, backup, tmp_path)
        settings = llm.model_dump()
        settings["providers"]["primary"]["rate_limits"]["tokens_per_minute"] = 50  # < 64 + prompt
        async with open_runtime(LLMConfig.model_validate(settings),
                                shared=SharedState(link, "w1")) as rt:
            with anyio.fail_after(15):
                answer = await rt.chat(HELLO)
        assert (answer.provider, answer.content) == ("backup", "Echo: hello there")
        assert [(a.provider, a.error_type) for a in answer.attempts] == [
            ("primary", "LLMTokenLimitError"), ("backup", None)]
        assert (await primary.stats())["total_requests"] == 0
        assert (await backup.stats())["total_requests"] == 1
