"""A turn whose model answered through the caller's own delta sink counts as answered, whatever
error ends it: the user message stays (the client saw part of an answer to it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import HistoryStore, RunTurn, session_child_spec
from actors.llm import ChatRequest, LLMServerError, TextDelta
from actors.mcp import ToolCatalog
from runtime import Actor, ActorSystem, ChildSpec, SupervisorSpec
from server.config import ChatConfig

pytestmark = pytest.mark.anyio


class _DeliverThenFail(Actor[ChatRequest]):
    """The LLM double of a stream whose text reached the caller's sink whole, after which the
    router failed with an error that carries no partial text (say, recording what it cost)."""

    async def receive(self, message: ChatRequest) -> None:
        assert message.deltas is not None
        await message.deltas(TextDelta("Whole answer"))
        raise LLMServerError("recording the call failed", provider="double")


async def test_a_failure_after_text_reached_the_callers_sink_keeps_the_user_message(
    tmp_path: Path,
) -> None:
    root = SupervisorSpec("root", [
        ChildSpec("router", _DeliverThenFail, crash_on=()),
        SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0),
    ])
    delivered: list[str] = []

    async def sink(delta: Any) -> None:
        delivered.append(delta.text)

    with HistoryStore(tmp_path / "history.sqlite3") as history:
        async with ActorSystem(root) as system:
            session = await system.spawn(session_child_spec(
                "c1", router=system.ref("router"), tools=ToolCatalog(system, []),
                history=history, chat=ChatConfig()), under="sessions")
            with anyio.fail_after(10), pytest.raises(LLMServerError):
                async with session.ask_stream(RunTurn("tell me", "r1", deltas=sink)) as items:
                    async for _ in items:
                        pass
            stored = history.load("c1")
    assert delivered == ["Whole answer"]
    assert stored == [{"role": "user", "content": "tell me"}]
