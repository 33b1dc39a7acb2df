"""``reasoning_effort``: per provider, per model (``model_params``) and per request, in that
order of precedence (request > model > provider), sent in each provider kind's own form.

The simulator's reasoning models think 2/8/16/32 tokens at ``minimal``/``low``/``medium``/``high``
(16 when nothing is asked), so ``usage.reasoning_tokens`` tells which effort the upstream received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.llm import ChatRequest, LLMConfig, ModelCatalog, ModelParams, ProviderCall, open_runtime
from actors.llm._provider_kinds import rules_for
from actors.llm._sdk_call import plan_call
from simulator.process import SimulatorProcess

HELLO = [{"role": "user", "content": "hello there"}]


def config(sim: SimulatorProcess, tmp_path: Path, **provider: Any) -> LLMConfig:
    return LLMConfig.model_validate({
        "providers": {"sim": {"kind": "openai-compatible", "base_url": sim.base_url,
                              "model": "o4-mini", "requires_api_key": False, "max_tokens": 64,
                              **provider}},
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
    })


async def test_request_beats_model_beats_provider(tmp_path: Path) -> None:
    async with SimulatorProcess() as sim:
        llm = config(sim, tmp_path, reasoning_effort="minimal",
                     model_params={"o4-mini": {"reasoning_effort": "low"}})
        async with open_runtime(llm) as rt:
            model_s = await rt.chat(HELLO)
            request_s = await rt.chat(HELLO, reasoning_effort="high")
            provider_s = await rt.chat(HELLO, model="gpt-5-mini")
            async with rt.stream(HELLO, model="gpt-5-mini", reasoning_effort="medium") as events:
                streamed = [event async for event in events][-1].response
    assert (model_s.model, model_s.usage.reasoning_tokens) == ("o4-mini", 8)
    assert (request_s.model, request_s.usage.reasoning_tokens) == ("o4-mini", 32)
    assert (provider_s.model, provider_s.usage.reasoning_tokens) == ("gpt-5-mini", 2)
    assert (streamed.model, streamed.usage.reasoning_tokens) == ("gpt-5-mini", 16)


async def test_a_model_effort_keeps_the_rest_of_its_familys_parameters(tmp_path: Path) -> None:
    # o4-mini refuses max_tokens and temperature: an override that names only the effort must
    # not bring them back (the simulator would answer 400 and the provider would retry).
    async with SimulatorProcess() as sim:
        llm = config(sim, tmp_path, model_params={"o4-mini": {"reasoning_effort": "minimal"}})
        async with open_runtime(llm) as rt:
            answer = await rt.chat(HELLO)
        stats = await sim.stats()
    assert (answer.content, answer.usage.reasoning_tokens) == ("Echo: hello there", 2)
    assert stats["total_requests"] == 1


async def test_openrouter_gets_the_configured_effort_as_its_reasoning_object(
        tmp_path: Path) -> None:
    async with SimulatorProcess() as sim:
        await sim.configure(flavor="openrouter")
        llm = config(sim, tmp_path, kind="openrouter", base_url=f"{sim.url}/api/v1",
                     api_key_env="SIM_UNSET_KEY", model="deepseek/deepseek-r1",
                     reasoning_effort="low",
                     prices={"deepseek/deepseek-r1": {"input": 0.4, "output": 2.0}})
        async with open_runtime(llm) as rt:
            configured = await rt.chat(HELLO)
            budget = await rt.chat(HELLO, reasoning_effort="5")  # OpenRouter: a token budget
    assert (configured.usage.reasoning_tokens, budget.usage.reasoning_tokens) == (8, 5)
    assert configured.reasoning.startswith("Thinking about the request: hello there")


def body_for(kind: str, **provider: Any) -> dict[str, Any]:
    llm = LLMConfig.model_validate({"providers": {"p": {
        "kind": kind, "base_url": "http://127.0.0.1:9/v1", "model": "o4-mini",
        "requires_api_key": False, **provider}}})
    provider_config = llm.providers["p"]
    catalog = ModelCatalog(params=provider_config.model_params)
    call = ProviderCall(ChatRequest.of(HELLO), "o4-mini", 10)
    return plan_call(call, provider_config, rules_for(kind), catalog.params("o4-mini")).body


def test_the_effort_is_sent_in_each_kinds_form() -> None:
    openai = body_for("openai-compatible", reasoning_effort="high")
    openrouter = body_for("openrouter", reasoning_effort="high")
    assert (openai["reasoning_effort"], "reasoning" in openai) == ("high", False)
    assert (openrouter["reasoning"], "reasoning_effort" in openrouter) == (
        {"effort": "high"}, False)
    assert "reasoning_effort" not in body_for("openai-compatible")


def test_catalog_params_override_only_the_fields_a_configured_entry_sets() -> None:
    catalog = ModelCatalog(params={
        "o4-mini": ModelParams(reasoning_effort="low"),
        "gpt-4o-mini": ModelParams(reasoning_effort="high"),
    })
    family = ModelCatalog().params("o4-mini")
    assert catalog.params("o4-mini") == family.model_copy(update={"reasoning_effort": "low"})
    assert catalog.params("o4-mini").max_tokens_param == "max_completion_tokens"
    assert catalog.params("gpt-4o-mini") == ModelParams(reasoning_effort="high")
    assert ModelCatalog().params("o4-mini").reasoning_effort is None
