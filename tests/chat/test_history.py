"""HistoryStore: conversations in SQLite (WAL), real files under tmp_path."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from actors.chat._history import HistoryStore, HistoryStoreClosed

CALL: dict[str, Any] = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1}'}}],
}


def test_unknown_conversation_is_empty_and_does_not_exist(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        assert store.load("nope") == []
        assert not store.exists("nope")


def test_appended_messages_load_back_in_order_with_their_exact_shape(tmp_path: Path) -> None:
    messages = [
        {"role": "user", "content": "héllo ✓"},
        CALL,
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
        {"role": "assistant", "content": "two"},
    ]
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        store.append("a", messages[:1])
        store.append("a", messages[1:])
        assert store.load("a") == messages
        assert store.exists("a")


def test_load_with_a_limit_returns_the_newest_messages_oldest_first(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        store.append("a", [{"role": "user", "content": str(i)} for i in range(10)])
        assert [m["content"] for m in store.load("a", limit=3)] == ["7", "8", "9"]
        assert store.load("a", limit=0) == []


def test_conversations_are_separate_and_clear_forgets_only_one(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        store.append("a", [{"role": "user", "content": "A"}])
        store.append("b", [{"role": "user", "content": "B"}])
        store.clear("a")
        store.clear("never-existed")
        assert store.load("a") == [] and not store.exists("a")
        assert store.load("b") == [{"role": "user", "content": "B"}]
        store.append("a", [{"role": "user", "content": "again"}])
        assert store.load("a") == [{"role": "user", "content": "again"}]


def test_history_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "h.sqlite3"
    with HistoryStore(path) as store:
        store.append("a", [{"role": "user", "content": "kept"}])
    with HistoryStore(path) as store:
        assert store.load("a") == [{"role": "user", "content": "kept"}]


def test_the_database_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with HistoryStore(path):
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        other.close()


def test_an_append_that_fails_stores_nothing(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        store.append("a", [{"role": "user", "content": "before"}])
        with pytest.raises(TypeError):
            store.append("a", [{"role": "user", "content": "ok"}, {"bad": object()}])
        assert store.load("a") == [{"role": "user", "content": "before"}]


def test_closed_store_refuses_calls_and_closing_twice_is_harmless(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    store.close()
    store.close()
    assert store.closed
    assert repr(store).endswith("[closed]>")
    with pytest.raises(HistoryStoreClosed, match=r" is closed$"):
        store.load("a")


def test_concurrent_appends_from_threads_keep_every_message(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite3") as store:

        def write(worker: int) -> None:
            for i in range(50):
                store.append("shared", [{"role": "user", "content": f"{worker}:{i}"}])

        threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        contents = [m["content"] for m in store.load("shared")]
    assert len(contents) == 200
    for worker in range(4):  # each writer's messages stay in its order
        mine = [c for c in contents if c.startswith(f"{worker}:")]
        assert mine == [f"{worker}:{i}" for i in range(50)]


async def test_calls_run_in_a_worker_thread_from_async_code(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite3") as store:
        await anyio.to_thread.run_sync(store.append, "a", [{"role": "user", "content": "x"}])
        assert await anyio.to_thread.run_sync(store.load, "a") == [
            {"role": "user", "content": "x"}
        ]
