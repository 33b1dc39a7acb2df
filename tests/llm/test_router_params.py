"""The request parameters the router checks before any reservation or call: the output limit
(``max_tokens``/``max_completion_tokens``), which bounds the ledger's reservation and the
provider's token limiter. Real simulators, the real ledger on SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from actors.llm import (
    ChatRequest,
    LLMBadRequestError,
    LLMConfig,
    LLMCostLimitError,
    LLMRuntime,
    ProviderConfig,
    create_llm_client,
    describe_validation_error,
)
from actors.llm._catalog import ModelParams
from actors.llm._messages import ProviderCall
from actors.llm._provider_kinds import rules_for
from actors.llm._sdk_call import plan_call
from simulator.process import SimulatorProcess
from tests.llm.test_router import HELLO, two_providers

pytestmark = pytest.mark.anyio

BAD_LIMITS = [
    ("abc", "str"), ("12x", "str"), ("12", "str"), (-5, "-5"), (0, "0"),
    (float("inf"), "inf"), (2.5, "2.5"), (True, "True"), ([64], "list"),
]


async def nothing_sent_or_held(rt: LLMRuntime, *sims: SimulatorProcess) -> None:
    for sim in sims:
        assert (await sim.stats())["total_requests"] == 0
    spend = await rt.spend()
    assert (spend.settled, spend.reserved, spend.open_reservations) == (0.0, 0.0, 0)


async def test_an_output_limit_that_is_not_a_positive_integer_is_a_bad_request(
        tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        for name in ("max_tokens", "max_completion_tokens"):
            for value, shown in BAD_LIMITS:
                with pytest.raises(LLMBadRequestError,
                                   match=rf"^{name} must be a positive integer, not {shown}$"):
                    await rt.chat(HELLO, **{name: value})
        await nothing_sent_or_held(rt, primary, backup)
        # A good one still goes through.
        answer = await rt.chat(HELLO, max_tokens=5)
        assert answer.content == "Echo: hello there"


async def test_the_client_refuses_a_bad_output_limit_before_calling() -> None:
    async with SimulatorProcess() as sim:
        config = {"kind": "openai-compatible", "model": "gpt-4o-mini", "base_url": sim.base_url,
                  "requires_api_key": False}
        async with create_llm_client("sim", config) as client:
            with pytest.raises(LLMBadRequestError,
                               match=r"^max_tokens must be a positive integer, not str$"):
                await client.get_response(HELLO, max_tokens="abc")
        assert (await sim.stats())["total_requests"] == 0


async def test_both_limit_names_are_reserved_as_the_body_sends_them(tmp_path: Path) -> None:
    # The body sends max_completion_tokens when both are given: that is the output to reserve.
    cost = {"db_path": str(tmp_path / "l.sqlite3"), "daily_cost_limit": 10.0,
            "max_cost_per_request": 1e-5}
    async with two_providers(tmp_path, cost=cost) as (rt, primary, backup):
        with pytest.raises(LLMCostLimitError,
                           match=r"^worst-case cost \$0\.000121 of sim-long \(9 prompt \+ 200 max "
                                 r"tokens\) exceeds max_cost_per_request \$0\.000010 "
                                 r"\(primary:sim-long\)$"):
            await rt.chat(HELLO, model="sim-long", provider="primary", max_tokens=1,
                          max_completion_tokens=200)
        await nothing_sent_or_held(rt, primary, backup)
        answer = await rt.chat(HELLO, model="sim-long", provider="primary", max_tokens=200,
                               max_completion_tokens=1)
        assert answer.usage.completion_tokens == 1


async def test_n_other_than_one_is_a_bad_request(tmp_path: Path) -> None:
    async with two_providers(tmp_path) as (rt, primary, backup):
        for value, shown in [(50, "50"), (2, "2"), (0, "0"), ("1", "str"), (1.0, "1.0"),
                             (True, "True")]:
            with pytest.raises(LLMBadRequestError,
                               match=rf"^n must be 1 \(one answer per request\), not {shown}$"):
                await rt.chat(HELLO, n=value)
        await nothing_sent_or_held(rt, primary, backup)
        answer = await rt.chat(HELLO, n=1)
        assert answer.content == "Echo: hello there"


@pytest.mark.parametrize(("key", "instead"), [
    ("max_tokens", "use the provider's max_tokens"),
    ("max_completion_tokens", "use the provider's max_tokens"),
    ("n", "one answer per request"),
    ("models", "use fallback_models with use_native_fallbacks"),
])
def test_extra_params_may_not_change_the_output_bound(key: str, instead: str) -> None:
    provider = {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                "requires_api_key": False, "extra_params": {"top_k": 3, key: 100_000}}
    with pytest.raises(ValidationError) as info:
        LLMConfig.model_validate({"providers": {"p": provider}})
    assert describe_validation_error(info.value, model=LLMConfig) == [
        f"providers.p.extra_params: {key} is not allowed in extra_params ({instead})"]


@pytest.mark.parametrize("params", [
    {}, {"max_tokens": 7}, {"max_completion_tokens": 9},
    {"max_tokens": 7, "max_completion_tokens": 9}, {"max_tokens": None},
    {"max_completion_tokens": None}, {"max_tokens": 7, "max_completion_tokens": None},
    {"max_tokens": None, "max_completion_tokens": 9}, {"n": 1, "max_tokens": 7},
])
@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("learned", [frozenset(), frozenset({"max_tokens"})])
def test_the_reserved_bound_is_the_limit_the_body_sends(
        params: dict[str, Any], name: Any, learned: frozenset[str]) -> None:
    # The ledger reserves output_limit(); the provider's token limiter acquires the plan's limit.
    config = ProviderConfig(kind="openai-compatible", base_url="http://127.0.0.1:9/v1",
                            model="m", requires_api_key=False, max_tokens=64,
                            extra_params={"top_k": 3})
    call = ProviderCall(ChatRequest.of(HELLO, params=params), "m", 5)
    plan = plan_call(call, config, rules_for(config.kind), ModelParams(max_tokens_param=name),
                     learned)
    limits = [plan.body[key] for key in ("max_tokens", "max_completion_tokens") if key in plan.body]
    assert limits == [plan.max_tokens] == [config.output_limit(params)]
