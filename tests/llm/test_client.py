"""The specification's client API (actors.llm.client_api) over a real simulator process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from actors.llm import ProviderConfig
from actors.llm.client_api import (
    LLMAuthError,
    LLMClientConfig,
    LLMResponse,
    OpenAIClient,
    OpenRouterClient,
    create_llm_client,
)
from simulator.process import SimulatorProcess

KEY = "sk-explicit-key-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorProcess]:
    async with SimulatorProcess({"api_keys": [KEY]}) as process:
        yield process


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^Unsupported provider: 'anthropic' \(expected one of "
                                         r"openai, openrouter, openai-compatible, or a config with "
                                         r"one of them as kind\)$"):
        create_llm_client("anthropic", {"model": "claude"})


def test_any_name_with_a_kind_is_a_client_of_that_kind() -> None:
    client = create_llm_client("ollama", {"kind": "openai-compatible", "model": "llama3.1",
                                          "base_url": "http://127.0.0.1:11434/v1"}, api_key=KEY)
    assert isinstance(client, OpenAIClient)
    assert repr(client) == "<OpenAIClient ollama llama3.1 [not initialized]>"


def test_the_factory_picks_the_class_by_kind() -> None:
    assert type(create_llm_client("openai", {"model": "m"})) is OpenAIClient
    assert type(create_llm_client("openrouter", {"model": "m"})) is OpenRouterClient


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"model": "gpt-4o-mini", "temperature": 3}, "temperature"),
        ({"model": "gpt-4o-mini", "top_p": -0.1}, "top_p"),
        ({"model": "gpt-4o-mini", "max_tokens": 0}, "max_tokens"),
        ({"model": "gpt-4o-mini", "frequency_penalty": 2.5}, "frequency_penalty"),
        ({"model": "gpt-4o-mini", "tempreature": 1}, "tempreature"),
        ({}, "model"),
    ],
)
def test_invalid_value_names_its_field(config: dict[str, Any], field: str) -> None:
    expected = rf"^invalid configuration for provider 'openai': {field}: "
    with pytest.raises(ValueError, match=expected):
        create_llm_client("openai", config)


def test_openai_compatible_needs_a_base_url() -> None:
    with pytest.raises(ValueError, match=r"base_url is required for kind 'openai-compatible'"):
        create_llm_client("openai-compatible", {"model": "llama"}, api_key=KEY)


def test_the_explicit_key_never_shows() -> None:
    client = create_llm_client("openai", {"model": "gpt-4o-mini"}, api_key=KEY)
    assert repr(client) == "<OpenAIClient openai gpt-4o-mini [not initialized]>"
    assert KEY not in repr(client.config) and KEY not in repr(vars(client))


async def test_estimate_tokens_is_awaitable_and_follows_openais_recipe() -> None:
    config = LLMClientConfig(model="gpt-4o-mini", base_url="https://api.openai.com/v1",
                             api_key=KEY)
    client = create_llm_client("openai", config)
    # 3 per message + "user" (1) + "hello world" (2) + 3 to prime the reply.
    assert await client.estimate_tokens(HELLO) == 9


def test_the_key_of_an_llm_client_config_never_shows() -> None:
    config = LLMClientConfig(model="gpt-4o-mini", base_url="https://api.openai.com/v1",
                             api_key=KEY)
    client = OpenAIClient(config)
    assert KEY not in repr(config) and KEY not in repr(client) and KEY not in str(vars(client))
    assert KEY not in config.model_dump_json()


async def test_calls_before_initialize_are_refused() -> None:
    client = create_llm_client("openai", {"model": "gpt-4o-mini"}, api_key=KEY)
    with pytest.raises(RuntimeError, match=r"^OpenAIClient is not initialized"):
        await client.get_response(HELLO)


async def test_explicit_key_works_without_environment(sim: SimulatorProcess) -> None:
    config = {"model": "gpt-4o-mini", "base_url": sim.base_url, "temperature": 0.2}
    async with create_llm_client("openai", config, api_key=KEY) as client:
        assert repr(client) == "<OpenAIClient openai gpt-4o-mini [running]>"
        response = await client.get_response(HELLO, max_tokens=1)
    assert response.content == "Echo:"
    assert response.finish_reason == "length"
    assert response.provider == "openai"
    assert repr(client) == "<OpenAIClient openai gpt-4o-mini [not initialized]>"


async def test_provider_config_and_llm_client_config_are_accepted(sim: SimulatorProcess) -> None:
    provider = ProviderConfig(kind="openai-compatible", base_url=sim.base_url, model="gpt-4o",
                              requires_api_key=False, api_key_env="SIM_NOT_SET")
    async with create_llm_client("openai-compatible", provider, api_key=KEY) as client:
        assert (await client.get_response(HELLO)).model == "gpt-4o"
    with pytest.raises(ValueError, match=r"^kind: 'openai-compatible' does not match provider"):
        create_llm_client("openai", provider)


async def test_a_wrong_explicit_key_is_an_auth_error_without_the_key(
    sim: SimulatorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-key-abcdefghijklmnop"
    caplog.set_level(logging.DEBUG)
    config = {"model": "gpt-4o-mini", "base_url": sim.base_url}
    async with create_llm_client("openai", config, api_key=wrong) as client:
        with pytest.raises(LLMAuthError) as info:
            await client.get_response(HELLO)
        with pytest.raises(LLMAuthError, match=r"rejected this API key"):
            await client.get_response(HELLO)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert wrong not in caplog.text


async def test_stream_response_yields_deltas_then_the_response(sim: SimulatorProcess) -> None:
    config = {"model": "gpt-4o-mini", "base_url": sim.base_url}
    async with create_llm_client("openai", config, api_key=KEY) as client:
        items = [item async for item in client.stream_response(HELLO)]
        tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
        async with client.stream_response([{"role": "user", "content": "call add"}],
                                          tools) as stream:
            tool_items = [item async for item in stream]
    assert all(isinstance(item, str) for item in items[:-1])
    assert "".join(str(item) for item in items[:-1]) == "Echo: hello world"
    final = items[-1]
    assert isinstance(final, LLMResponse)
    assert final.content == "Echo: hello world"
    assert final.usage.completion_tokens == 3
    assert len(tool_items) == 1
    assert isinstance(tool_items[0], LLMResponse)
    assert tool_items[0].tool_calls[0].name == "add"


async def test_leaving_a_stream_early_closes_the_upstream_stream(sim: SimulatorProcess) -> None:
    await sim.configure(faults={"chunk_delay": 0.05})
    config = {"model": "sim-long", "base_url": sim.base_url}
    async with create_llm_client("openai", config, api_key=KEY) as client:
        async with client.stream_response(HELLO) as stream:
            first = await stream.__anext__()
        assert first == "Echo:"
        assert repr(stream) == "<ResponseStream openai [closed]>"
        with anyio.fail_after(2):
            while (stats := await sim.stats())["streams"]["open"]:
                await anyio.sleep(0.01)
    assert stats["streams"]["aborted_by_client"] == 1
