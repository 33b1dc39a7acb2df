"""The router's money: what a failed, cancelled or timed-out attempt pays, per-provider cost
settings, and a ledger that is down. Real simulators, the real ledger on SQLite."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from actors.llm import (
    LLMCostLimitError,
    LLMRuntime,
    LLMServerError,
    LLMTimeoutError,
    TextDelta,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from actors.llm._ledger_lock import LedgerUnavailable
from runtime.testing import FakeClock
from simulator.process import SimulatorProcess
from tests.llm.test_router import HELLO, llm_config, prompt_cost, settled, two_providers


async def test_cancelled_stream_stops_upstream_and_is_charged_what_it_streamed(
        tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        await primary.configure(faults={"chunk_delay": 0.05})
        messages = [{"role": "user", "content": "long"}]
        delivered: list[str] = []
        async with rt.stream(messages, model="sim-long") as events:
            async for event in events:
                assert isinstance(event, TextDelta)
                delivered.append(event.text)
                break
        with anyio.fail_after(5):
            while (await primary.stats())["streams"]["aborted_by_client"] < 1:
                await anyio.sleep(0.05)
        spend = await settled(rt)
        # At least the prompt and what reached us (the router may have relayed a little more).
        assert spend >= prompt_cost(rt, messages, "sim-long", "".join(delivered)) - 1e-9


async def test_a_stream_cancelled_before_its_first_chunk_is_charged_its_prompt(
        tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        await primary.configure(faults={"first_byte_delay": 30})
        async with rt.stream(HELLO):
            with anyio.fail_after(10):
                while (await primary.stats())["total_requests"] < 1:
                    await anyio.sleep(0.02)
            # The request left for the upstream: leaving the block now cancels it in flight.
        assert await settled(rt) == pytest.approx(prompt_cost(rt, HELLO, "gpt-4o-mini"),
                                                  abs=1e-9)
        assert (await backup.stats())["total_requests"] == 0


async def test_a_call_timed_out_in_flight_is_charged_its_output_limit(tmp_path: Path) -> None:
    # A non-streaming request is not stopped upstream when its client gives up: billed whole.
    async with two_providers(tmp_path) as (rt, primary, backup):
        await primary.configure(faults={"latency": 30})
        with pytest.raises(LLMTimeoutError, match=r"^the request's 1s budget ran out before "):
            await rt.chat(HELLO, timeout=1, provider="primary")
        assert await settled(rt) == pytest.approx(
            prompt_cost(rt, HELLO, "gpt-4o-mini", completion=64), abs=1e-9)
        assert (await backup.stats())["total_requests"] == 0


async def test_an_upstream_error_status_releases_the_reservation(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        await primary.configure(faults={"rate_500": 1.0})
        await backup.configure(faults={"rate_500": 1.0})
        with pytest.raises(LLMServerError):
            await rt.chat(HELLO)
        spend = await rt.spend()
        assert (spend.settled, spend.reserved, spend.open_reservations) == (0.0, 0.0, 0)


async def test_provider_cost_settings_tracking_warning_threshold_and_fallback_models(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with SimulatorProcess() as primary, SimulatorProcess() as backup:
        config = llm_config(primary, backup, tmp_path)
        untracked = config.providers["primary"].model_copy(update={
            "enable_cost_tracking": False, "enable_fallback_models": False})
        warned = config.providers["backup"].model_copy(update={"cost_warning_threshold": 1e-9})
        config = config.model_copy(update={"providers": {"primary": untracked, "backup": warned}})
        async with open_runtime(config) as rt:
            free = await rt.chat(HELLO)
            assert (free.provider, free.usage.total_cost, free.cost_warning) == (
                "primary", None, False)
            assert (await rt.spend()).settled == 0.0

            costly = await rt.chat(HELLO, provider="backup")
            assert costly.cost_warning is True
            assert costly.usage.total_cost is not None
            assert await settled(rt) == pytest.approx(costly.usage.total_cost, abs=1e-9)
            with anyio.fail_after(5):
                while rt.metrics_summary()["by_model"].get("backup:gpt-4o", {}).get(
                        "cost_warnings") != 1:
                    await anyio.sleep(0.01)
            assert [r.getMessage() for r in caplog.records
                    if "cost_warning_threshold" in r.getMessage()] == [
                f"request {costly.request_id} on backup:gpt-4o cost "
                f"${costly.usage.total_cost:.6f}, above the provider's cost_warning_threshold "
                "$0.000000"]

            # enable_fallback_models: false: the primary's gpt-4.1-mini is never tried.
            await primary.configure(faults={"rate_500": 1.0})
            answer = await rt.chat(HELLO)
            assert [(a.provider, a.model) for a in answer.attempts] == [
                ("primary", "gpt-4o-mini"), ("backup", "gpt-4o")]


async def test_a_ledger_down_fails_requests_at_once_shows_in_health_and_recovers(
        tmp_path: Path) -> None:
    clock = FakeClock()
    async with two_providers(tmp_path, clock=clock) as (rt, primary, backup):
        book = rt.system.durable("ledger")
        with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as conn:
            conn.execute("DROP TABLE charges")
        await rt.chat(HELLO)  # answered and counted; writing its charge fails
        with anyio.fail_after(5):
            while book.down is None:
                await anyio.sleep(0.01)
        with anyio.fail_after(2), pytest.raises(LedgerUnavailable):
            await rt.chat(HELLO)
        health = rt.health()
        assert (health["status"], health["ledger"]["state"]) == ("failing", "down")
        assert health["ledger"]["error"] == book.down
        assert (await primary.stats())["total_requests"] == 1
        assert (await backup.stats())["total_requests"] == 0

        await clock.advance(5.0)  # the ledger reopens its file
        assert rt.health()["ledger"]["state"] == "ok"
        assert (await rt.chat(HELLO)).provider == "primary"


async def test_a_turns_budget_holds_across_its_requests(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        # The turn's budget is exactly one worst case (64 output tokens): the first request fits,
        # and once it has cost anything the next worst case no longer does.
        limit = worst_case(rt, "gpt-4o-mini", 64)
        first = await rt.chat(HELLO, turn_id="t1", turn_cost_limit=limit)
        assert (first.usage.total_cost or 0.0) > 0
        with pytest.raises(LLMCostLimitError, match=r"^max_cost_per_turn \$\d\.\d{6} would be "
                           r"passed: this turn settled "):
            await rt.chat(HELLO, turn_id="t1", turn_cost_limit=limit)
        assert (await primary.stats())["total_requests"] == 1
        assert (await rt.chat(HELLO, turn_id="t2", turn_cost_limit=limit)).provider == "primary"


def worst_case(rt: LLMRuntime, model: str, max_tokens: int) -> float:
    cost = build_catalog(rt.config).cost_of(model, count_message_tokens(HELLO, model), max_tokens)
    assert cost is not None
    return cost
