"""RouterActor and open_runtime end to end: two simulator processes as two providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import (
    LLMConfig,
    LLMCostLimitError,
    LLMRuntime,
    LLMStreamingError,
    LLMTokenLimitError,
    StreamEnd,
    TextDelta,
    open_runtime,
)
from simulator.testing import SimulatorProcess

HELLO = [{"role": "user", "content": "hello there"}]


def llm_config(primary: SimulatorProcess, backup: SimulatorProcess, tmp_path: Path,
               **overrides: Any) -> LLMConfig:
    def provider(sim: SimulatorProcess, model: str, **extra: Any) -> dict[str, Any]:
        return {"kind": "openai-compatible", "base_url": sim.base_url, "model": model,
                "requires_api_key": False, "max_tokens": 64,
                "breaker": {"minimum_number_of_calls": 100},
                "prices": {name: {"input": 0.15, "output": 0.6}
                           for name in ("sim-long", "sim-tiny")}, **extra}

    values: dict[str, Any] = {
        "providers": {
            "primary": provider(primary, "gpt-4o-mini", fallback_models=["gpt-4.1-mini"]),
            "backup": provider(backup, "gpt-4o"),
        },
        "active": "primary",
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0,
                 "max_cost_per_request": 1.0},
        "request_timeout": 20,
    }
    values.update(overrides)
    return LLMConfig.model_validate(values)


@asynccontextmanager
async def two_providers(tmp_path: Path, **overrides: Any) -> AsyncIterator[
        tuple[LLMRuntime, SimulatorProcess, SimulatorProcess]]:
    async with SimulatorProcess() as primary, SimulatorProcess() as backup:
        config = llm_config(primary, backup, tmp_path, **overrides)
        async with open_runtime(config) as rt:
            yield rt, primary, backup


async def test_chat_is_served_by_the_active_provider(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        answer = await rt.chat(HELLO)
        assert answer.content == "Echo: hello there"
        assert (answer.provider, answer.model) == ("primary", "gpt-4o-mini")
        assert [(a.provider, a.error_type) for a in answer.attempts] == [("primary", None)]
        assert (await primary.stats())["total_requests"] == 1
        assert (await backup.stats())["total_requests"] == 0
        # An error is an answer: the router did not crash (which would fail every other ask).
        assert rt.system.status()["router"].restart_count == 0
        spend = await rt.spend()
        assert spend.reserved == 0 and spend.open_reservations == 0


async def test_server_errors_fall_back_to_the_next_model_then_provider(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        await primary.configure(faults={"rate_500": 1.0})
        answer = await rt.chat(HELLO)
        assert (answer.provider, answer.model) == ("backup", "gpt-4o")
        assert [(a.provider, a.model, a.error_type) for a in answer.attempts] == [
            ("primary", "gpt-4o-mini", "LLMServerError"),
            ("primary", "gpt-4.1-mini", "LLMServerError"),
            ("backup", "gpt-4o", None),
        ]
        summary = rt.metrics_summary()
        assert summary["fallbacks"]
        assert (await rt.spend()).open_reservations == 0


async def test_upstream_context_length_error_is_returned_at_once(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        # sim-tiny has a 256-token window the catalog does not know: only upstream can refuse.
        with pytest.raises(LLMTokenLimitError):
            await rt.chat([{"role": "user", "content": "word " * 400}], model="sim-tiny")
        assert (await primary.stats())["total_requests"] == 1
        assert (await backup.stats())["total_requests"] == 0
        # An error is an answer: the router did not crash (which would fail every other ask).
        assert rt.system.status()["router"].restart_count == 0


async def test_preflight_token_limit_refuses_before_any_call(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        huge = [{"role": "user", "content": "word " * 200_000}]
        with pytest.raises(LLMTokenLimitError):
            await rt.chat(huge)
        assert (await primary.stats())["total_requests"] == 0
        assert (await backup.stats())["total_requests"] == 0


async def test_cost_limit_is_returned_at_once(tmp_path: Path) -> None:
    cost = {"db_path": str(tmp_path / "l.sqlite3"), "max_cost_per_request": 1e-9}
    async with two_providers(tmp_path, cost=cost) as (rt, primary, backup):
        with pytest.raises(LLMCostLimitError):
            await rt.chat(HELLO)
        assert (await primary.stats())["total_requests"] == 0


async def test_stream_delivers_deltas_then_the_assembled_answer(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        deltas: list[str] = []
        end: StreamEnd | None = None
        async with rt.stream(HELLO) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    deltas.append(event.text)
                else:
                    end = event
        assert end is not None
        assert "".join(deltas) == end.response.content == "Echo: hello there"
        assert end.response.usage.completion_tokens > 0


async def test_stream_falls_back_before_its_first_chunk(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        await primary.configure(faults={"rate_503": 1.0})
        async with rt.stream(HELLO) as events:
            items = [event async for event in events]
        assert isinstance(items[-1], StreamEnd)
        assert items[-1].response.provider == "backup"


async def test_stream_failing_after_first_chunk_keeps_delivered_text(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        await primary.configure(faults={"rate_midstream_drop": 1.0})
        delivered: list[str] = []
        with pytest.raises(LLMStreamingError) as caught:
            async with rt.stream([{"role": "user", "content": "tell me a long story"}],
                                 model="sim-long") as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        delivered.append(event.text)
        assert delivered
        assert caught.value.partial_text == "".join(delivered)
        assert not caught.value.retryable
        assert (await backup.stats())["total_requests"] == 0
        assert (await rt.spend()).open_reservations == 0


async def test_cancelled_stream_stops_upstream_and_releases_its_reservation(
        tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        await primary.configure(faults={"chunk_delay": 0.05})
        async with rt.stream([{"role": "user", "content": "long"}], model="sim-long") as events:
            async for event in events:
                assert isinstance(event, TextDelta)
                break
        with anyio.fail_after(5):
            while (await primary.stats())["streams"]["aborted_by_client"] < 1:
                await anyio.sleep(0.05)
        with anyio.fail_after(5):
            while (await rt.spend()).open_reservations:
                await anyio.sleep(0.05)


async def test_health_reports_each_provider(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        health = rt.health()
        assert health["status"] == "ok"
        assert set(health["providers"]) == {"primary", "backup"}
        assert health["providers"]["primary"]["state"] == "running"
        assert health["providers"]["primary"]["breaker"] == "closed"


async def test_a_provider_at_its_own_rate_limit_hands_the_request_to_the_next(
        tmp_path: Path) -> None:
    async with SimulatorProcess() as primary, SimulatorProcess() as backup:
        config = llm_config(primary, backup, tmp_path)
        limited = config.providers["primary"].model_copy(
            update={"rate_limits": config.providers["primary"].rate_limits.model_copy(
                update={"requests_per_minute": 1})})
        config = config.model_copy(update={"providers": {**config.providers, "primary": limited}})
        async with open_runtime(config) as rt:
            assert (await rt.chat(HELLO)).provider == "primary"
            with anyio.fail_after(5):  # waiting for primary's next slot would take a minute
                answer = await rt.chat(HELLO, timeout=10)
            assert answer.provider == "backup"
            assert answer.attempts[0].error_type == "LLMRateLimitError"
        assert (await primary.stats())["total_requests"] == 1
