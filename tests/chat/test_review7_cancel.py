"""Review 7: a turn cancelled (its socket closed) while its history write is under way.

The write is not cancelled (``GroupCommit`` shields it: it lands, then the caller sees the
cancellation), but the session took the cancellation before it noted the write: the user
message still counted as unwritten and was written a second time as the turn ended, and the
step or answer written stayed out of the live conversation while the store held it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio

from actors.chat import RunTurn, ToolCallFinished, TurnText
from tests.chat.test_session import backend, turn


@contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock (another worker writing): the
    session's append waits for it (busy timeout 10 s)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def _seen(messages: Any) -> list[str]:
    return [f"{m['role']}:{str(m.get('content'))[:14]}" for m in messages]


async def _cancel_during_write(b: Any, session: Any, db: Path, text: str,
                               last: Callable[[Any], bool]) -> None:
    """Run a turn until its ``last`` event before the write arrived, then leave it (the
    socket closed) while the write waits for the lock, then free the lock. The lock is taken
    as the model is first called, once the user message (written meanwhile) is stored: nothing
    of the answer passes before it is."""
    with ExitStack() as lock, anyio.fail_after(20):
        async def take_lock() -> None:
            b.model.meanwhile = None
            for _ in range(500):
                if b.history.load("c1"):
                    break
                await anyio.sleep(0.01)
            lock.enter_context(_write_lock(db))

        b.model.meanwhile = take_lock
        async with session.ask_stream(RunTurn(text, "r1", {})) as items:
            async for event in items:
                if last(event):
                    break
            await anyio.sleep(0.3)  # the write is waiting for the lock
        await anyio.sleep(0.3)  # cancelled meanwhile; the write goes on once the lock is free
    await anyio.sleep(0.5)


async def test_a_turn_cancelled_while_its_answer_is_written_is_stored_and_kept_once(
    tmp_path: Path,
) -> None:
    async with backend(tmp_path, servers={}) as b:
        session = await b.session()
        await _cancel_during_write(b, session, tmp_path / "history.sqlite3", "hello",
                                   lambda e: isinstance(e, TurnText) and e.text == " hello")
        stored = b.history.load("c1")
        await turn(session, "next", request_id="r2")
        live = _seen(b.model.requests[-1].messages[1:])
    assert _seen(stored) == ["user:hello", "assistant:Echo: hello"]
    assert live == ["user:hello", "assistant:Echo: hello", "user:next"]


async def test_a_turn_cancelled_while_its_tool_step_is_written_is_stored_and_kept_once(
    tmp_path: Path,
) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        await _cancel_during_write(b, session, tmp_path / "history.sqlite3",
                                   'call add {"a": 2, "b": 3}',
                                   lambda e: isinstance(e, ToolCallFinished))
        stored = b.history.load("c1")
        await turn(session, "next", request_id="r2")
        live = _seen(b.model.requests[-1].messages[1:])
    step = ['user:call add {"a":', "assistant:None", "tool:5.0"]
    assert _seen(stored) == step
    assert live == [*step, "user:next"]
