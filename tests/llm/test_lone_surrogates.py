"""Text UTF-8 cannot carry: a ``\\ud800`` escape that no low surrogate follows (a client's, a
tool's or a model's text split inside an escape) decodes in Python to a lone surrogate, and the
SDK writes request bodies in UTF-8. Such a request is sent with U+FFFD in its place, streaming or
not, instead of failing with a raw ``UnicodeEncodeError`` before anything is sent. A real
simulator on 127.0.0.1 echoes what it received."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from actors.llm import LLMConfig, StreamEnd, TextDelta, open_runtime
from actors.llm._sdk_call import utf8_safe
from simulator.process import SimulatorProcess

pytestmark = pytest.mark.anyio

SPLIT = [{"role": "user", "content": "a\ud800b"}]


def _config(sim: SimulatorProcess, tmp_path: Path) -> LLMConfig:
    return LLMConfig.model_validate({
        "providers": {"p": {"kind": "openai-compatible", "base_url": sim.base_url,
                            "model": "gpt-4o-mini", "requires_api_key": False}},
        "active": "p", "cost": {"db_path": str(tmp_path / "ledger.sqlite3")},
        "request_timeout": 20,
    })


async def test_a_lone_surrogate_is_sent_as_the_replacement_character(tmp_path: Path) -> None:
    async with SimulatorProcess() as sim, open_runtime(_config(sim, tmp_path)) as rt:
        with anyio.fail_after(15):
            answer = await rt.chat(SPLIT)
            text = []
            async with rt.stream(SPLIT) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        text.append(event.text)
                    else:
                        assert isinstance(event, StreamEnd)
        assert answer.content == "Echo: a\ufffdb"
        assert "".join(text) == "Echo: a\ufffdb"
        assert (await sim.stats())["total_requests"] == 2


def test_utf8_safe_replaces_only_lone_surrogates_in_keys_values_and_lists() -> None:
    body = {"messages": [{"role": "user", "content": "x\udc00y \U0001f600"}],
            "k\ud800": ("t", 1, None), "n": 2.5}
    assert utf8_safe(body) == {"messages": [{"role": "user", "content": "x\ufffdy \U0001f600"}],
                               "k\ufffd": ["t", 1, None], "n": 2.5}
