"""OpenRouter's native fallbacks (``use_native_fallbacks``): the upstream may answer with any model
of the ``models`` list it is sent, so the router checks each one's context window and reserves
for the costliest. A simulator process as the upstream, the real ledger on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import (
    LLMBadRequestError,
    LLMConfig,
    LLMCostLimitError,
    LLMRuntime,
    LLMTokenLimitError,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from simulator.process import SimulatorProcess
from tests.llm.test_router import HELLO, settled

pytestmark = pytest.mark.anyio

PRICES = {"gpt-4o-mini": {"input": 1.0, "output": 1.0},
          "gpt-4o": {"input": 1000.0, "output": 1000.0}}


@asynccontextmanager
async def openrouter(tmp_path: Path, max_cost_per_request: float, **provider: Any
                     ) -> AsyncIterator[tuple[LLMRuntime, SimulatorProcess]]:
    async with SimulatorProcess() as sim:
        config = LLMConfig.model_validate({
            "providers": {"or": {
                "kind": "openrouter", "base_url": sim.base_url, "requires_api_key": False,
                "model": "gpt-4o-mini", "fallback_models": ["gpt-4o"],
                "use_native_fallbacks": True, "max_tokens": 100, "prices": PRICES,
                "breaker": {"minimum_number_of_calls": 100}, **provider}},
            "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0,
                     "max_cost_per_request": max_cost_per_request},
            "request_timeout": 20,
        })
        async with open_runtime(config) as rt:
            yield rt, sim


def worst_case(rt: LLMRuntime, model: str) -> float:
    cost = build_catalog(rt.config).cost_of(model, count_message_tokens(HELLO, model), 100)
    assert cost is not None
    return cost


async def test_the_costliest_native_fallback_is_held_to_max_cost_per_request(
        tmp_path: Path) -> None:
    async with openrouter(tmp_path, max_cost_per_request=0.01) as (rt, sim):
        prompt = count_message_tokens(HELLO, "gpt-4o")
        assert worst_case(rt, "gpt-4o-mini") < 0.01 < worst_case(rt, "gpt-4o")
        with pytest.raises(LLMCostLimitError, match=(
                rf"^worst-case cost \${worst_case(rt, 'gpt-4o'):.6f} of gpt-4o \({prompt} prompt"
                r" \+ 100 max tokens\) exceeds max_cost_per_request \$0\.010000 \(or:gpt-4o\)$")):
            await rt.chat(HELLO)
        assert (await sim.stats())["total_requests"] == 0
        assert (await settled(rt)) == 0.0


async def test_an_attempt_with_native_fallbacks_holds_the_costliest_worst_case(
        tmp_path: Path) -> None:
    async with openrouter(tmp_path, max_cost_per_request=1.0) as (rt, sim):
        await sim.configure(faults={"latency": 1.0})
        async with anyio.create_task_group() as tg:
            answers: list[Any] = []

            async def ask() -> None:
                answers.append(await rt.chat(HELLO))

            tg.start_soon(ask)
            with anyio.fail_after(10):
                while (spend := await rt.spend()).open_reservations == 0:
                    await anyio.sleep(0.01)
            assert spend.reserved == pytest.approx(worst_case(rt, "gpt-4o"), abs=1e-9)
        assert (answers[0].provider, answers[0].model) == ("or", "gpt-4o-mini")
        assert await settled(rt) == pytest.approx(answers[0].usage.total_cost, abs=1e-9)


async def test_each_native_fallback_must_fit_its_context_window(tmp_path: Path) -> None:
    async with openrouter(tmp_path, max_cost_per_request=1.0,
                          context_windows={"gpt-4o": 50}) as (rt, sim):
        prompt = count_message_tokens(HELLO, "gpt-4o")
        with pytest.raises(LLMTokenLimitError, match=(
                rf"^prompt of {prompt} tokens plus max_tokens 100 exceeds the context window of "
                rf"gpt-4o \(50 tokens\) by {prompt + 50} tokens")):
            await rt.chat(HELLO)
        assert (await sim.stats())["total_requests"] == 0


async def test_a_request_may_not_name_the_models_list(tmp_path: Path) -> None:
    async with openrouter(tmp_path, max_cost_per_request=1.0,
                          use_native_fallbacks=False) as (rt, sim):
        with pytest.raises(LLMBadRequestError, match=(
                r"^models is not a request parameter \(a provider's fallback_models, with "
                r"use_native_fallbacks, send it\)$")):
            await rt.chat(HELLO, models=["gpt-4o-mini", "gpt-4o"])
        assert (await sim.stats())["total_requests"] == 0
        assert (await settled(rt)) == 0.0
