"""Review 9: the user message is written while the model is called, not before.

Written before the call (review 8), the write's hop through a worker thread sat on the path to
the first text: at 200 concurrent streams, a p99 first text of 1,310 ms against 906 ms without
it (`benchmarks/streams.py`'s load, four rounds side by side). It now runs beside the call, and
nothing of the answer reaches the client or the store before it is written.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import HistoryWriteError, RunTurn, TurnComplete
from tests.chat.test_session import backend, of_type, text_of, turn


async def test_nothing_of_the_answer_passes_before_the_user_message_is_written(
    tmp_path: Path,
) -> None:
    async with backend(tmp_path, servers={}) as b:
        session = await b.session()
        assert of_type(await turn(session, "hello"), TurnComplete)
        events: list[Any] = []
        # Another connection holds the write lock (a backup): the user message's write waits.
        with closing(sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            async with anyio.create_task_group() as tasks:
                async def run() -> None:
                    with anyio.fail_after(20):
                        async with session.ask_stream(RunTurn("again", "r2", {})) as items:
                            async for event in items:
                                events.append(event)

                tasks.start_soon(run)
                try:
                    for _ in range(100):  # the model is called meanwhile, and answers at once
                        if len(b.model.requests) == 2:
                            break
                        await anyio.sleep(0.01)
                    assert len(b.model.requests) == 2
                    await anyio.sleep(0.5)
                    assert events == []  # its answer waits for the write
                    # (Read on the lock holder's connection: the store's own waits for it.)
                    assert db.execute("SELECT count(*) FROM messages").fetchone() == (2,)
                finally:
                    db.execute("ROLLBACK")
        assert text_of(events) == "Echo: again"
        assert of_type(events, TurnComplete)
        assert [m["content"] for m in b.history.load("c1")] == [
            "hello", "Echo: hello", "again", "Echo: again"]


async def test_a_user_message_that_cannot_be_written_ends_the_turn_with_nothing_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    async with backend(tmp_path, servers={}) as b:
        session = await b.session()
        path = tmp_path / "history.sqlite3"
        with closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.message LIKE"
                       " '%\"user\"%' BEGIN SELECT RAISE(ABORT, 'disk is full'); END")
            db.commit()
        thinking = anyio.Event()

        async def think() -> None:  # the model thinks until it is cancelled
            thinking.set()
            await anyio.sleep_forever()

        b.model.meanwhile = think
        events: list[Any] = []
        errors: list[BaseException] = []
        with closing(sqlite3.connect(path, isolation_level=None)) as lock:
            lock.execute("BEGIN IMMEDIATE")  # the write waits until the model is thinking

            async def run() -> None:
                try:
                    with anyio.fail_after(20):
                        async with session.ask_stream(RunTurn("hello", "r1", {})) as items:
                            async for event in items:
                                events.append(event)
                except HistoryWriteError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run)
                with anyio.fail_after(10):
                    await thinking.wait()
                lock.execute("ROLLBACK")  # the write goes on, and fails
        assert [str(e) for e in errors] == [
            "the conversation could not be saved; this answer was not completed"]
        assert events == []
        assert b.model.cancelled == 1  # its call was cancelled, not answered to no one
        with closing(sqlite3.connect(path)) as db:
            db.execute("DROP TRIGGER refuse")
            db.commit()
        b.model.meanwhile = None
        assert text_of(await turn(session, "next", request_id="r2")) == "Echo: next"
        stored = b.history.load("c1")
    assert [m["content"] for m in stored] == ["next", "Echo: next"]
    assert [r.getMessage() for r in caplog.records if "history write" in r.getMessage()] == [
        "conversation c1...: history write failed (IntegrityError: disk is full); the turn "
        "ends unsaved"]
