"""RouterActor and open_runtime end to end: two simulator processes as two providers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import (
    ContentRefused,
    LLMConfig,
    LLMCostLimitError,
    LLMResponse,
    LLMRuntime,
    LLMStreamingError,
    LLMTokenLimitError,
    StreamEnd,
    TextDelta,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from actors.llm._tokens import count_text_tokens
from runtime import Clock
from runtime.testing import FakeClock
from simulator.process import SimulatorProcess
from tests.chaos.upstream import GarbageUpstream, Reply

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
async def two_providers(tmp_path: Path, clock: Clock | None = None, **overrides: Any
                        ) -> AsyncIterator[tuple[LLMRuntime, SimulatorProcess, SimulatorProcess]]:
    async with SimulatorProcess() as primary, SimulatorProcess() as backup:
        config = llm_config(primary, backup, tmp_path, **overrides)
        async with open_runtime(config, clock=clock) as rt:
            yield rt, primary, backup


def prompt_cost(rt: LLMRuntime, messages: list[dict[str, Any]], model: str,
                streamed: str = "", completion: int | None = None) -> float:
    """What the ledger charges an attempt that sent ``messages`` and streamed ``streamed``
    (or, given, ``completion`` output tokens)."""
    if completion is None:
        completion = count_text_tokens(streamed, model) if streamed else 0
    cost = build_catalog(rt.config).cost_of(model, count_message_tokens(messages, model),
                                            completion)
    assert cost is not None
    return cost


async def settled(rt: LLMRuntime) -> float:
    """Today's settled spend once no reservation is open any more (settles arrive by tell)."""
    with anyio.fail_after(10):
        while (spend := await rt.spend()).open_reservations:
            await anyio.sleep(0.02)
    return spend.settled


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
        assert (await rt.spend()).open_reservations == 0
        with anyio.fail_after(5):  # metrics arrive by tell: wait for the two fallback events
            while rt.metrics_summary()["fallbacks"]["total"] < 2:
                await anyio.sleep(0.01)
        assert rt.metrics_summary()["fallbacks"] == {"total": 2,
                                                     "by_reason": {"LLMServerError": 2}}


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


async def test_a_content_refusal_is_returned_at_once_unless_fallback_on_refusal(
        tmp_path: Path) -> None:
    refusal = Reply(status=400, body=json.dumps({"error": {
        "message": "flagged", "type": "invalid_request_error", "code": "content_filter"}}).encode())
    async with GarbageUpstream() as refusing, SimulatorProcess() as backup:
        refusing.reply = refusal
        for fallback_on_refusal in (False, True):
            config = llm_config(backup, backup, tmp_path, fallback_on_refusal=fallback_on_refusal)
            primary = config.providers["primary"].model_copy(
                update={"base_url": refusing.base_url, "fallback_models": []})
            config = config.model_copy(
                update={"providers": {**config.providers, "primary": primary}})
            async with open_runtime(config) as rt:
                if not fallback_on_refusal:
                    with pytest.raises(ContentRefused, match=r"refused the content: flagged"):
                        await rt.chat(HELLO)
                    assert (await backup.stats())["total_requests"] == 0
                else:
                    answer = await rt.chat(HELLO)
                    assert [(a.provider, a.error_type) for a in answer.attempts] == [
                        ("primary", "ContentRefused"), ("backup", None)]
                    assert (await backup.stats())["total_requests"] == 1
                assert (await rt.spend()).settled == (0.0 if not fallback_on_refusal
                                                      else answer.usage.total_cost)
        assert refusing.requests == 2


async def test_a_rate_limited_provider_is_paused_until_the_clock_passes_retry_after(
        tmp_path: Path) -> None:
    clock = FakeClock()
    async with two_providers(tmp_path, clock=clock) as (rt, primary, backup):
        await primary.configure(faults={"rate_429": 1.0, "retry_after": 30})
        first = await rt.chat(HELLO)
        assert first.provider == "backup"
        assert first.attempts[0].error_type == "LLMRateLimitError"
        asked = (await primary.stats())["total_requests"]
        await primary.configure(faults={"rate_429": 0.0})

        paused = await rt.chat(HELLO)  # primary is paused: the backup goes first
        assert [(a.provider, a.error_type) for a in paused.attempts] == [("backup", None)]
        assert (await primary.stats())["total_requests"] == asked

        await clock.advance(30)
        again = await rt.chat(HELLO)
        assert [(a.provider, a.error_type) for a in again.attempts] == [("primary", None)]


async def hedging_runtime(tmp_path: Path, clock: FakeClock
                          ) -> AbstractAsyncContextManager[
                              tuple[LLMRuntime, SimulatorProcess, SimulatorProcess]]:
    hedging = {"enabled": True, "max_share": 1.0, "min_delay": 2.0}
    return two_providers(tmp_path, clock=clock, hedging=hedging)


async def warm_up(rt: LLMRuntime) -> None:
    """20 answers from the primary: enough latency samples (all 0 s on the fake clock) for a p95,
    so the hedge delay is ``min_delay``."""
    for _ in range(20):
        assert (await rt.chat(HELLO)).provider == "primary"


async def test_a_slow_primary_is_hedged_after_the_delay_on_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await hedging_runtime(tmp_path, clock) as (rt, primary, backup):
        await warm_up(rt)
        before = await settled(rt)
        await primary.configure(faults={"latency": 60})
        async with one_in_flight(rt, clock) as answers:
            await clock.advance(1.9)
            assert (await backup.stats())["total_requests"] == 0
            await clock.advance(0.1)
        [answer] = answers
        assert answer.provider == "backup"
        assert [(a.provider, a.hedge) for a in answer.attempts] == [("backup", True)]
        assert rt.metrics_summary()["hedges"] == 1
        # The cancelled primary left for the upstream, which finishes a non-streaming request:
        # it pays its whole output limit (64), the hedge its answer.
        expected = (prompt_cost(rt, HELLO, "gpt-4o-mini", completion=64)
                    + (answer.usage.total_cost or 0.0))
        assert await settled(rt) - before == pytest.approx(expected, abs=1e-9)


async def test_a_primary_answering_within_the_delay_sends_no_hedge(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await hedging_runtime(tmp_path, clock) as (rt, primary, backup):
        await warm_up(rt)
        answer = await rt.chat(HELLO)
        assert [(a.provider, a.hedge) for a in answer.attempts] == [("primary", False)]
        assert (await backup.stats())["total_requests"] == 0
        assert rt.metrics_summary()["hedges"] == 0


async def collect(rt: LLMRuntime, answers: list[LLMResponse]) -> None:
    answers.append(await rt.chat(HELLO))


@asynccontextmanager
async def one_in_flight(rt: LLMRuntime, clock: FakeClock) -> AsyncIterator[list[LLMResponse]]:
    """One request started: in the block it is in flight, its hedge timer armed on ``clock``;
    once the block has ended, the list holds its answer."""
    answers: list[LLMResponse] = []
    async with anyio.create_task_group() as group:
        sleepers = clock.sleepers
        group.start_soon(collect, rt, answers)
        with anyio.fail_after(10):
            while clock.sleepers == sleepers:
                await anyio.sleep(0.01)
        yield answers
