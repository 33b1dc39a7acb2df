"""Review 4: a cleared conversation's messages are no longer held by its live actor.

The actor measures the history it keeps (``chat.max_history_bytes``) once per message and keeps
the list it measured; a clear emptied the history but left that list, and so the cleared messages,
in memory until the conversation's next turn or its actor's stop (10 idle minutes).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from actors.chat import ClearHistory
from actors.chat._session import SessionActor
from tests.chat.test_session import backend, turn


def _held_by_an_actor(content: str) -> int:
    """How many lists or tuples a SessionActor holds that hold a message of ``content``."""
    gc.collect()
    containers = [o for o in gc.get_objects() if type(o) in (list, tuple) and any(
        type(m) is dict and m.get("content") == content for m in o)]
    return sum(1 for o in containers
               if any(isinstance(r, SessionActor) for r in gc.get_referrers(o)))


async def test_a_cleared_history_is_not_held_by_the_conversation_actor(tmp_path: Path) -> None:
    marker = "forget me, review 4"
    async with backend(tmp_path, servers={}) as b:
        session = await b.session()
        await turn(session, marker)
        assert _held_by_an_actor(marker) == 1
        cleared: list[Any] = []
        async with session.ask_stream(ClearHistory()) as items:
            async for item in items:
                cleared.append(item)
        assert cleared == []
        assert b.history.load("c1") == []
        assert _held_by_an_actor(marker) == 0
