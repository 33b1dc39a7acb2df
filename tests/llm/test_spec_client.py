"""The specification's client API, called as "Modern LLM Client Architecture" writes it.

Lines marked ``# spec`` are copied verbatim from the specification (sections 1, 3, 4, 5, 8); the
``Configuration`` stand-in is the specification's own ``self.configuration`` (its ``config.py``),
holding ``data/spec_config.yaml`` with only ``base_url`` pointed at a real simulator process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from actors.llm.client_api import (
    BaseLLMClient,
    LLMClientConfig,
    LLMMetrics,
    LLMResponse,
    LLMTokenLimitError,
    OpenAIClient,
    OpenRouterClient,
    Usage,
    create_llm_client,
)
from simulator.process import SimulatorProcess

SPEC_CONFIG = Path(__file__).parent / "data" / "spec_config.yaml"
KEY = "sk-spec-test-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hello world"}]
# The simulator counts (characters // 4) + 4 per message: 11 // 4 + 4.
SIM_PROMPT_TOKENS = 6
SIM_COMPLETION_TOKENS = 3  # "Echo:", "hello", "world"


class Configuration:
    """The specification's configuration object, over the verbatim block."""

    def __init__(self, base_url: str) -> None:
        data: dict[str, Any] = yaml.safe_load(SPEC_CONFIG.read_text())
        for provider in data["llm"]["providers"].values():
            provider["base_url"] = base_url
        self._llm: dict[str, Any] = data["llm"]
        self.llm_api_key = KEY

    def get_llm_config(self) -> dict[str, Any]:
        return self._llm


class ChatService:
    """The integration of the specification's section 5, as written there."""

    def __init__(self, configuration: Configuration) -> None:
        self.configuration = configuration
        provider = self.configuration.get_llm_config()["active"]  # spec
        llm_config = self.configuration.get_llm_config()["providers"][provider]  # spec
        api_key = self.configuration.llm_api_key  # spec
        self.llm_client = create_llm_client(provider, llm_config, api_key)  # spec

    async def initialize(self) -> None:
        await self.llm_client.initialize()  # spec


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorProcess]:
    async with SimulatorProcess({"api_keys": [KEY], "flavor": "openrouter"}) as process:
        yield process


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)


def test_llm_client_config_has_the_specifications_fields_and_bounds() -> None:
    config = LLMClientConfig(base_url="https://api.openai.com/v1", model="gpt-4o-mini",
                             api_key=KEY)
    assert (config.temperature, config.max_tokens, config.top_p) == (0.7, 4096, 1.0)
    assert (config.frequency_penalty, config.presence_penalty) == (0.0, 0.0)
    assert (config.timeout, config.max_retries) == (60.0, 3)
    assert (config.max_connections, config.max_keepalive_connections) == (100, 20)
    assert (config.extra_headers, config.extra_params) == ({}, {})
    assert config.api_key.get_secret_value() == KEY
    for field, bad in [("temperature", 2.1), ("temperature", -0.1), ("max_tokens", 0),
                       ("top_p", 1.1), ("frequency_penalty", -2.1), ("presence_penalty", 2.1),
                       ("timeout", 0), ("max_retries", -1), ("max_connections", 0),
                       ("max_keepalive_connections", 0)]:
        with pytest.raises(ValueError, match=rf"\n{field}\n"):
            LLMClientConfig(base_url="https://x.test/v1", model="m", api_key=KEY,
                            **{field: bad})


def test_usage_and_llm_response_have_the_specifications_fields() -> None:
    usage = Usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens,
            usage.total_cost) == (0, 0, 0, None)
    response = LLMResponse(content="hi", model="m", provider="openai")
    assert response.message == {"role": "assistant", "content": "hi"}
    assert (response.finish_reason, response.model, response.provider) == (None, "m", "openai")
    assert response.usage == Usage()
    assert response.response_time_ms == 0.0


def test_create_llm_client_raises_value_error_for_an_unsupported_provider() -> None:
    with pytest.raises(ValueError, match=r"^Unsupported provider: 'anthropic'"):
        create_llm_client("anthropic", {"model": "claude-3-haiku"}, KEY)


def test_each_provider_of_the_specification_block_gets_its_client() -> None:
    llm = yaml.safe_load(SPEC_CONFIG.read_text())["llm"]
    openai = create_llm_client("openai", llm["providers"]["openai"], KEY)
    openrouter = create_llm_client("openrouter", llm["providers"]["openrouter"], KEY)
    assert isinstance(openai, OpenAIClient) and isinstance(openai, BaseLLMClient)
    assert isinstance(openrouter, OpenRouterClient) and isinstance(openrouter, BaseLLMClient)
    assert openrouter.config.extra_headers == {"HTTP-Referer": "https://localhost:8000",
                                               "X-Title": "MCP Platform"}


async def test_the_specifications_calls_run_on_the_actor_runtime(sim: SimulatorProcess) -> None:
    service = ChatService(Configuration(sim.base_url))
    await service.initialize()
    client = service.llm_client
    try:
        messages = MESSAGES
        estimated_tokens = await client.estimate_tokens(messages)  # spec
        response = await client.get_response(messages)
        tracked = await client.get_response_with_cost_tracking(messages=messages)
    finally:
        await client.aclose()

    assert estimated_tokens == 9  # OpenAI's recipe: 3 + "user" 1 + "hello world" 2 + 3
    assert response.message == {"role": "assistant", "content": "Echo: hello world"}
    assert response.finish_reason == "stop"
    assert response.model == "openai/gpt-4o-mini"
    assert response.provider == "openrouter"
    assert response.usage.prompt_tokens == SIM_PROMPT_TOKENS
    assert response.usage.completion_tokens == SIM_COMPLETION_TOKENS
    assert response.usage.total_tokens == SIM_PROMPT_TOKENS + SIM_COMPLETION_TOKENS
    assert response.response_time_ms is not None and response.response_time_ms > 0

    # OpenRouter's reported cost (the simulator prices 0.15 / 0.60 USD per million tokens).
    prompt_cost = SIM_PROMPT_TOKENS * 0.15 / 1e6
    completion_cost = SIM_COMPLETION_TOKENS * 0.6 / 1e6
    assert set(tracked) == {"response", "cost_info"}
    assert tracked["response"].message == response.message
    info = tracked["cost_info"]
    assert info["total_cost"] == tracked["response"].usage.total_cost
    assert info["total_cost"] == pytest.approx(prompt_cost + completion_cost, rel=1e-12)
    assert info["prompt_cost"] == pytest.approx(prompt_cost, rel=1e-12)
    assert info["completion_cost"] == pytest.approx(completion_cost, rel=1e-12)


async def test_the_price_table_prices_a_call_where_nothing_is_reported() -> None:
    async with SimulatorProcess({"api_keys": [KEY]}) as openai_sim:
        config = {"base_url": openai_sim.base_url, "model": "gpt-4o-mini",
                  "prices": {"gpt-4o-mini": {"input": 1.0, "output": 2.0}}}
        async with create_llm_client("openai", config, KEY) as client:
            tracked = await client.get_response_with_cost_tracking(messages=MESSAGES)
    usage = tracked["response"].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        SIM_PROMPT_TOKENS, SIM_COMPLETION_TOKENS)
    info = tracked["cost_info"]
    expected = (SIM_PROMPT_TOKENS * 1.0 / 1e6, SIM_COMPLETION_TOKENS * 2.0 / 1e6)
    assert info["prompt_cost"] == pytest.approx(expected[0], rel=1e-12)
    assert info["completion_cost"] == pytest.approx(expected[1], rel=1e-12)
    assert info["total_cost"] == pytest.approx(sum(expected), rel=1e-12)


async def test_cost_tracking_disabled_reports_no_cost(sim: SimulatorProcess) -> None:
    config = {"base_url": sim.base_url, "model": "openai/gpt-4o-mini",
              "enable_cost_tracking": False}
    async with create_llm_client("openrouter", config, KEY) as client:
        tracked = await client.get_response_with_cost_tracking(messages=MESSAGES)
    assert tracked["cost_info"] == {"total_cost": None, "prompt_cost": None,
                                    "completion_cost": None}


async def test_a_prompt_over_the_context_window_is_refused_before_any_call(
    sim: SimulatorProcess,
) -> None:
    config = {"base_url": sim.base_url, "model": "gpt-4o-mini", "max_tokens": 10,
              "context_windows": {"gpt-4o-mini": 12}}
    async with create_llm_client("openai", config, KEY) as client:
        with pytest.raises(LLMTokenLimitError, match=r"exceeds the context window"):
            await client.get_response(MESSAGES)
    assert (await sim.stats())["total_requests"] == 0


def test_llm_metrics_made_alone_as_the_specification_writes_it() -> None:
    metrics = LLMMetrics()
    metrics.record_request(
        provider="openai", model="gpt-4o", tokens=100, cost=0.25, response_time_ms=300.0)
    metrics.record_request("openai", "gpt-4o", 50, None, 100.0, "LLMRateLimitError")
    assert metrics.get_summary() == {
        "total_requests": 2,
        "total_tokens": 150,
        "total_cost": 0.25,
        "avg_response_time": 200.0,
        "error_rate": 0.5,
        "by_model": {"openai:gpt-4o": 2},
    }


async def test_llm_metrics_records_and_summarises_in_the_specifications_shape(
    sim: SimulatorProcess,
) -> None:
    config = {"base_url": sim.base_url, "model": "openai/gpt-4o-mini"}
    async with create_llm_client("openrouter", config, KEY) as client:
        metrics: LLMMetrics = client.metrics
        metrics.record_request(  # the specification's signature, by keyword
            provider="openai", model="gpt-4o", tokens=100, cost=0.25, response_time_ms=300.0,
            error=None)
        metrics.record_request("openai", "gpt-4o", 50, None, 100.0, "LLMRateLimitError")
        await anyio.wait_all_tasks_blocked()
        summary = metrics.get_summary()
        # The client's own calls are recorded by its provider actor.
        response = await client.get_response(MESSAGES)
        await anyio.wait_all_tasks_blocked()
        after_call = metrics.get_summary()
    assert summary == {
        "total_requests": 2,
        "total_tokens": 150,
        "total_cost": 0.25,
        "avg_response_time": 200.0,
        "error_rate": 0.5,
        "by_model": {"openai:gpt-4o": 2},
    }
    assert after_call["total_requests"] == 3
    assert after_call["total_tokens"] == 150 + SIM_PROMPT_TOKENS + SIM_COMPLETION_TOKENS
    assert after_call["total_cost"] == 0.25 + (response.usage.total_cost or 0.0)
    assert after_call["error_rate"] == 1 / 3
    assert after_call["by_model"] == {"openai:gpt-4o": 2, "openrouter:openai/gpt-4o-mini": 1}
