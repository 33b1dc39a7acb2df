"""The specification's client API ("Modern LLM Client Architecture"), review 8: what its own
code does with our classes (sections 2, 3 and 7), run as the specification writes it.

Lines marked ``# spec`` are the specification's, verbatim but for the values they are given.
"""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator

import pytest

from actors.llm._config import LLMConfig
from actors.llm._runtime import open_runtime
from actors.llm.client_api import (
    LLMAuthError,
    LLMClientError,
    LLMCostLimitError,
    LLMModelNotFoundError,
    LLMRateLimitError,
    LLMResponse,
    Usage,
    create_llm_client,
)
from simulator.process import SimulatorProcess


def test_llm_rate_limit_error_takes_retry_after_as_the_specification_declares_it() -> None:
    # ``def __init__(self, message: str, retry_after: float | None = None)`` (section 7)
    positional = LLMRateLimitError("OpenAI rate limit: slow down", 2.5)
    keyword = LLMRateLimitError("OpenAI rate limit: slow down", retry_after=2.5)
    plain = LLMRateLimitError("OpenAI rate limit: slow down")  # spec (section 3)
    assert (positional.retry_after, keyword.retry_after, plain.retry_after) == (2.5, 2.5, None)
    assert str(positional) == "OpenAI rate limit: slow down"
    assert isinstance(positional, LLMClientError)
    copy = pickle.loads(pickle.dumps(positional))
    assert (type(copy), copy.retry_after, str(copy)) == (
        LLMRateLimitError, 2.5, "OpenAI rate limit: slow down")


def test_llm_response_built_from_the_assistant_message_keeps_it() -> None:
    message = {"role": "assistant", "content": "Echo: hello"}
    response = LLMResponse(  # spec (section 3, with the SDK's values in place)
        message=message,
        finish_reason="stop",
        usage=Usage(prompt_tokens=6, completion_tokens=3, total_tokens=9, total_cost=0.5),
        model="gpt-4o-mini",
        provider="openai",
        response_time_ms=12.5,
    )
    assert response.message == message
    assert response.content == "Echo: hello"
    assert (response.finish_reason, response.model, response.provider) == (
        "stop", "gpt-4o-mini", "openai")
    assert response.usage == Usage(prompt_tokens=6, completion_tokens=3, total_tokens=9,
                                   total_cost=0.5)
    assert response.response_time_ms == 12.5


def test_llm_response_built_from_a_tool_calling_message_keeps_its_calls() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    response = LLMResponse(message=message, finish_reason="tool_calls", model="gpt-4o",
                           provider="openai")
    assert response.message == message
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("call_1", "add", '{"a": 2, "b": 3}')]


def test_llm_response_takes_an_unknown_usage_and_time_as_none() -> None:
    # ``usage: Usage | None = None`` and ``response_time_ms: float | None = None`` (section 2)
    response = LLMResponse(message={"role": "assistant", "content": "hi"}, usage=None,
                           model="m", provider="openrouter", response_time_ms=None)
    assert response.usage == Usage()
    assert response.response_time_ms == 0.0
    assert response.message == {"role": "assistant", "content": "hi"}


@pytest.mark.parametrize(("fields", "problem"), [
    ({"message": {"role": "user", "content": "hi"}}, "role"),
    ({"message": "hi"}, "message"),
    ({"message": {"role": "assistant", "content": "a"}, "content": "b"}, "content"),
])
def test_llm_response_refuses_a_message_it_cannot_keep(fields: dict[str, object],
                                                       problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        LLMResponse(model="m", provider="openai", **fields)


# -- the provider block's money and fallback keys, honoured by the client API (section 6) ------

KEY = "sk-spec-test-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hello world"}]
# What the simulator charges "Echo: hello world" (6 + 3 tokens at 0.15 / 0.60 USD per million).
SIM_COST = (6 * 0.15 + 3 * 0.6) / 1e6


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorProcess]:
    async with SimulatorProcess({"api_keys": [KEY], "flavor": "openrouter"}) as process:
        yield process


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)


async def test_the_clients_max_cost_per_request_refuses_before_any_call(
    sim: SimulatorProcess,
) -> None:
    config = {"base_url": sim.base_url, "model": "openai/gpt-4o-mini",
              "max_cost_per_request": 0.000001}  # worst case: 6 + 4096 tokens, $0.0024
    async with create_llm_client("openrouter", config, KEY) as client:
        with pytest.raises(LLMCostLimitError, match=r"max_cost_per_request"):
            await client.get_response(MESSAGES)
    assert (await sim.stats())["total_requests"] == 0


async def test_the_clients_daily_cost_limit_stops_calls_once_spent(sim: SimulatorProcess) -> None:
    config = {"base_url": sim.base_url, "model": "openai/gpt-4o-mini", "max_tokens": 3,
              "daily_cost_limit": 2.5 * SIM_COST}  # room for two answers' worst case
    async with create_llm_client("openrouter", config, KEY) as client:
        first = await client.get_response(MESSAGES)
        second = await client.get_response(MESSAGES)
        with pytest.raises(LLMCostLimitError, match=r"daily"):
            await client.get_response(MESSAGES)
    assert first.usage.total_cost == second.usage.total_cost == pytest.approx(SIM_COST)
    assert (await sim.stats())["total_requests"] == 2


async def test_the_clients_cost_warning_threshold_flags_a_costlier_answer(
    sim: SimulatorProcess,
) -> None:
    config = {"base_url": sim.base_url, "model": "openai/gpt-4o-mini",
              "cost_warning_threshold": SIM_COST / 2}
    async with create_llm_client("openrouter", config, KEY) as client:
        response = await client.get_response(MESSAGES)
    assert response.cost_warning is True


async def test_the_clients_fallback_models_answer_when_the_model_is_missing(
    sim: SimulatorProcess,
) -> None:
    config = {"base_url": sim.base_url, "model": "openai/no-such-model",
              "fallback_models": ["openai/gpt-4o-mini"]}
    async with create_llm_client("openrouter", config, KEY) as client:
        response = await client.get_response(MESSAGES)
        tracked = await client.get_response_with_cost_tracking(messages=MESSAGES)
    assert response.model == "openai/gpt-4o-mini"
    assert response.message == {"role": "assistant", "content": "Echo: hello world"}
    assert [a.model for a in response.attempts] == ["openai/no-such-model", "openai/gpt-4o-mini"]
    assert tracked["cost_info"]["total_cost"] == pytest.approx(SIM_COST)
    assert (await sim.stats())["total_requests"] == 4


async def test_the_clients_fallback_models_stay_unused_when_disabled(
    sim: SimulatorProcess,
) -> None:
    config = {"base_url": sim.base_url, "model": "openai/no-such-model",
              "fallback_models": ["openai/gpt-4o-mini"], "enable_fallback_models": False}
    async with create_llm_client("openrouter", config, KEY) as client:
        with pytest.raises(LLMModelNotFoundError):
            await client.get_response(MESSAGES)
    assert (await sim.stats())["total_requests"] == 1


async def test_a_lone_provider_whose_key_was_rejected_answers_auth_errors_while_it_restarts(
    sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The router skipped the restarting provider with "unavailable (circuit breaker closed)".
    monkeypatch.setenv("REVIEW8_KEY", "sk-wrong-key-abcdefghijklmnop")
    config = LLMConfig.model_validate({"providers": {"sim": {
        "kind": "openai-compatible", "base_url": sim.base_url, "model": "gpt-4o-mini",
        "api_key_env": "REVIEW8_KEY"}}, "cost": {"track_costs": False}})
    async with open_runtime(config) as runtime:
        with pytest.raises(LLMAuthError, match=r"^sim rejected the API key"):
            await runtime.chat(MESSAGES)
        with pytest.raises(LLMAuthError, match=r"^sim rejected this API key; waiting for a new"):
            await runtime.chat(MESSAGES)
    assert (await sim.stats())["total_requests"] == 1
