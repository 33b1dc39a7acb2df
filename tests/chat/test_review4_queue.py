"""Review 4: how many requests may wait for one conversation (``chat.max_queued_turns``).

Any number of sockets of one client may send turns to one conversation; each waited its turn
holding its message, for up to the turn's deadline (over 20 minutes by default). Measured before
the bound on a real server: 250 sockets x 4 turns of 60 KB on one conversation, 856 of them
queued, +106.7 MiB of server RSS.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import ClearHistory, ConversationUnavailable, RunTurn, TurnComplete
from server.config import ChatConfig
from tests.chat.test_session import backend, text_of


async def _events(items: Any) -> list[Any]:
    with anyio.fail_after(20):
        return [event async for event in items]


async def test_requests_beyond_max_queued_turns_are_refused_at_once_and_store_nothing(
    tmp_path: Path,
) -> None:
    async with backend(tmp_path, servers={}) as b:
        session = await b.session(max_queued_turns=2)
        async with AsyncExitStack() as stack:
            # Sent in this order from one task: the first runs, two wait, the rest find no room.
            running = await stack.enter_async_context(
                session.ask_stream(RunTurn("first slowly one two three", "r1")))
            waiting = [await stack.enter_async_context(session.ask_stream(RunTurn(text, rid)))
                       for text, rid in (("second", "r2"), ("third", "r3"))]
            refused = await stack.enter_async_context(session.ask_stream(RunTurn("fourth", "r4")))
            clear = await stack.enter_async_context(session.ask_stream(ClearHistory()))
            for beyond in (refused, clear):
                with anyio.fail_after(5), pytest.raises(
                        ConversationUnavailable,
                        match=r"^the conversation is busy: 2 requests are waiting for it; try"
                              r" again when they have ended$"):
                    await _events(beyond)
            ended = [await _events(items) for items in (running, *waiting)]
        assert [text_of(events) for events in ended] == [
            "Echo: first slowly one two three", "Echo: second", "Echo: third"]
        assert all(isinstance(events[-1], TurnComplete) for events in ended)
        assert [m["content"] for m in b.history.load("c1") if m["role"] == "user"] == [
            "first slowly one two three", "second", "third"]
        with anyio.fail_after(20):  # room again once they ended
            async with session.ask_stream(RunTurn("fifth", "r5")) as items:
                assert text_of(await _events(items)) == "Echo: fifth"


def test_max_queued_turns_is_validated() -> None:
    assert ChatConfig().max_queued_turns == 16
    with pytest.raises(ValueError, match="max_queued_turns"):
        ChatConfig(max_queued_turns=0)
