"""client.stream_response over a reasoning model: text deltas, then the response with the
reasoning. A simulator process speaking DeepSeek's ``reasoning_content``."""

from __future__ import annotations

import pytest

from actors.llm.client_api import LLMResponse, create_llm_client
from simulator.process import SimulatorProcess

pytestmark = pytest.mark.anyio

KEY = "sk-explicit-key-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello world"}]
REASONING = ("Thinking about the request: hello world weighing the options then checking each "
             "step again weighing the")


async def test_stream_response_of_a_reasoning_model_yields_text_then_the_reasoned_answer(
        ) -> None:
    async with SimulatorProcess({"api_keys": [KEY]}) as sim:
        config = {"kind": "openai-compatible", "model": "deepseek-reasoner",
                  "base_url": sim.base_url}
        async with create_llm_client("deepseek", config, api_key=KEY) as client:
            async with client.stream_response(HELLO) as stream:
                items = [item async for item in stream]
            assert all(isinstance(item, str) for item in items[:-1])
            assert "".join(str(item) for item in items[:-1]) == "Echo: hello world"
            response = items[-1]
            assert isinstance(response, LLMResponse)
            assert (response.content, response.reasoning) == ("Echo: hello world", REASONING)
            assert repr(stream) == "<ResponseStream deepseek [closed]>"
        assert (await sim.stats())["total_requests"] == 1
