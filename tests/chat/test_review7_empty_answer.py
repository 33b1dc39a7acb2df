"""Review 7: an answer with no text (a reasoning model whose output limit its reasoning spent,
a content filter) was stored as ``{"role": "assistant", "content": null}``: OpenAI accepts a
null ``content`` only beside ``tool_calls`` ("Invalid value for 'content': expected a string,
got null"), so every later turn of the conversation sent a request the upstream refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.chat import HistoryStore, TurnComplete, session_child_spec
from actors.llm import LLMConfig, open_runtime
from actors.mcp import ToolCatalog
from runtime import SupervisorSpec
from server.config import ChatConfig
from server.simulated import simulated_llm_config
from simulator.process import SimulatorProcess
from tests.chat.test_session import backend, of_type, turn


def _valid_for_openai(message: dict[str, Any]) -> bool:
    """OpenAI's rule for an assistant message: a string ``content`` unless it has tool calls."""
    if message["role"] != "assistant" or message.get("tool_calls"):
        return True
    return isinstance(message.get("content"), str)


async def test_an_answer_without_text_is_stored_as_a_message_the_upstream_accepts(
    tmp_path: Path,
) -> None:
    # o4-mini reasons 16 tokens before answering; an output limit of 8 leaves no text.
    async with SimulatorProcess() as sim:
        llm = simulated_llm_config(LLMConfig(), sim.url)
        provider = llm.providers["simulator"].model_copy(
            update={"model": "o4-mini", "max_tokens": 8})
        llm = llm.model_copy(update={"providers": {"simulator": provider}})
        sessions = SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0)
        with HistoryStore(tmp_path / "history.sqlite3") as history:
            async with open_runtime(llm, extra_children=[sessions]) as runtime:
                session = await runtime.system.spawn(session_child_spec(
                    "c1", router=runtime.router, tools=ToolCatalog(runtime.system, []),
                    history=history, chat=ChatConfig()), under="sessions")
                events = await turn(session, "hello")
                stored = history.load("c1")
    assert of_type(events, TurnComplete)[0].finish_reason == "length"
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1] == {"role": "assistant", "content": ""}
    assert all(_valid_for_openai(m) for m in stored)


async def test_an_answer_stored_without_text_before_the_fix_is_sent_with_a_string(
    tmp_path: Path,
) -> None:
    async with backend(tmp_path, servers={}) as b:
        b.history.append("c1", [{"role": "user", "content": "hello"},
                                {"role": "assistant", "content": None}])
        await turn(await b.session(), "again")
        sent = list(b.model.requests[-1].messages[1:])
    assert sent == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": ""},
                    {"role": "user", "content": "again"}]
