"""Review 7: what the model sees on a conversation's next turn does not depend on whether the
conversation stayed live in this process or was read back from the store (a restart, another
worker).

Before, a turn whose tool steps passed ``chat.max_history_bytes`` kept the notes that replaced
its oldest results in the live conversation, while the store kept the results whole: the next
turn sent the notes when the conversation stayed live and the whole results (trimmed to the
same bound) after a restart.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from actors.chat import TurnComplete
from actors.chat._trimming import message_bytes
from tests.chat.test_session import backend, of_type, turn

_LONG = "b" * 6000
_ASK = f'call echo {{"text": "{_LONG}"}} again'
"""A call of 6,000 characters, and again after every result (until ``max_tool_hops``)."""

_SETTINGS: dict[str, Any] = {"max_history_bytes": 36_000, "max_tool_hops": 4}


def _label(message: dict[str, Any]) -> str:
    if message["role"] == "assistant":
        return "call" if message.get("tool_calls") else "answer"
    if message["role"] == "tool":
        return "result" if message["content"] == _LONG else "note"
    return str(message["role"])


def _copy_database(source: Path, target: Path) -> None:
    """What a process killed now would leave: the committed state of the live database."""
    target.mkdir()
    with sqlite3.connect(source) as live, sqlite3.connect(target / "history.sqlite3") as copy:
        live.backup(copy)
    live.close()
    copy.close()


async def test_the_next_turn_sends_the_same_messages_live_and_after_a_restart(
    tmp_path: Path,
) -> None:
    restarted = tmp_path / "restarted"
    # Live: a turn of four steps (notes replaced the oldest results inside it), then "thanks"
    # on the same actor.
    async with backend(tmp_path) as b:
        session = await b.session(**_SETTINGS)
        events = await turn(session, _ASK)
        assert of_type(events, TurnComplete)[0].finish_reason == "max_tool_hops"
        _copy_database(tmp_path / "history.sqlite3", restarted)
        await turn(session, "thanks", request_id="r2")
        live = list(b.model.requests[-1].messages)
    # Restarted: a new process (actor system, store, MCP server) on the database as the first
    # turn left it, and the same "thanks".
    async with backend(restarted) as b:
        stored = b.history.load("c1")
        session = await b.session(**_SETTINGS)
        await turn(session, "thanks", request_id="r2")
        resumed = list(b.model.requests[-1].messages)
    assert [m["content"] for m in stored if m["role"] == "tool"] == [_LONG] * 4
    assert [_label(m) for m in live] == [_label(m) for m in resumed]
    assert live == resumed
    # The store is right (see the fix): the newest whole units within max_history_bytes, no
    # note of a turn that has ended.
    assert [_label(m) for m in live] == [
        "system", "call", "result", "call", "result", "answer", "user"]
    assert sum(message_bytes(m) for m in live[1:-1]) <= 36_000


async def test_a_history_at_its_byte_bound_is_kept_alike_live_and_after_a_restart(
    tmp_path: Path,
) -> None:
    # An answer with reasoning_details: its list, built live by copying, measured 16 bytes less
    # than the same list decoded from the store (a list's spare capacity was counted). With the
    # bound between the two, the live conversation kept the first user message and the one
    # read back did not.
    text = "think " + "x" * 2000
    user = {"role": "user", "content": text}
    answer = {"role": "assistant", "content": f"Echo: {text}",
              "reasoning_details": [{"type": "reasoning.text", "text": "Let me think."}]}
    stored_bytes = sum(message_bytes(json.loads(json.dumps(m))) for m in (user, answer))
    settings: dict[str, Any] = {"max_history_bytes": stored_bytes - 8}
    restarted = tmp_path / "restarted"
    async with backend(tmp_path, servers={}) as b:
        session = await b.session(**settings)
        await turn(session, text)
        _copy_database(tmp_path / "history.sqlite3", restarted)
        await turn(session, "next", request_id="r2")
        live = list(b.model.requests[-1].messages)
    async with backend(restarted, servers={}) as b:
        assert b.history.load("c1") == [user, answer]
        await turn(await b.session(**settings), "next", request_id="r2")
        resumed = list(b.model.requests[-1].messages)
    assert live == resumed
    assert live[1:] == [answer, {"role": "user", "content": "next"}]
