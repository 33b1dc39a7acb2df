"""HistoryStore and GroupCommit with text SQLite cannot bind as UTF-8: a lone surrogate.

A tool result or a model's text may carry one (JSON's ``\\ud800`` escape decodes to it; Python
gives undecodable file names as ``\\udcXX``). The outbox escapes it on the wire; the store must
keep it too, and above all must not fail the other conversations' appends of its batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import GroupCommit, HistoryStore

pytestmark = pytest.mark.anyio

LONE = {"role": "tool", "tool_call_id": "call_1", "content": "name: caf\udce9.txt"}
SPLIT_PAIR = {"role": "assistant", "content": "smile \ud83d"}
PLAIN = {"role": "user", "content": "hello é"}


def test_messages_with_lone_surrogates_are_stored_and_load_back_exactly(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        store.append("a", [PLAIN, LONE, SPLIT_PAIR])
        assert store.load("a") == [PLAIN, LONE, SPLIT_PAIR]
    with HistoryStore(tmp_path / "history.sqlite3") as reopened:
        assert reopened.load("a") == [PLAIN, LONE, SPLIT_PAIR]


def test_a_lone_surrogate_in_one_append_does_not_fail_the_others_of_its_batch(
    tmp_path: Path,
) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        assert store.append_batch([("a", [LONE]), ("b", [PLAIN])]) == [None, None]
        assert (store.load("a"), store.load("b")) == ([LONE], [PLAIN])


async def test_appends_committed_together_with_a_lone_surrogate_all_succeed(
    tmp_path: Path,
) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        appends = GroupCommit(store)
        results: dict[str, BaseException | None] = {}

        async def append(conversation_id: str, message: dict[str, Any]) -> None:
            try:
                await appends.append(conversation_id, [message])
            except Exception as exc:
                results[conversation_id] = exc
            else:
                results[conversation_id] = None

        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                for conversation_id, message in (("a", PLAIN), ("b", LONE), ("c", PLAIN)):
                    task_group.start_soon(append, conversation_id, message)
        assert results == {"a": None, "b": None, "c": None}
        assert [store.load(c) for c in "abc"] == [[PLAIN], [LONE], [PLAIN]]
