"""What history keeps: at most ``chat.max_stored_messages`` per conversation, and nothing older
than ``chat.retention_days`` (conversations and the ids issued for them), live ones spared."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from actors.chat import EXPIRE_BATCH, HistoryStore
from server.config import ChatConfig
from server.conversations import ConversationOwners, expire_conversations
from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    receive,
    send,
    write_config,
)


def _message(n: int) -> dict[str, str]:
    return {"role": "user", "content": f"m{n}"}


def _rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(count)


def test_a_conversation_keeps_its_newest_max_stored_messages(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with HistoryStore(path, max_stored_messages=3) as store:
        store.append("a", [_message(0), _message(1)])
        assert store.load("a") == [_message(0), _message(1)]
        store.append("a", [_message(2), _message(3)])
        assert store.load("a") == [_message(1), _message(2), _message(3)]
        store.append("a", [_message(4)])
        store.append("b", [_message(9)])
        assert store.load("a") == [_message(2), _message(3), _message(4)]
        assert store.load("a", 2) == [_message(3), _message(4)]
    assert _rows(path, "messages") == 4  # a's three, b's one: the older ones are deleted


def test_without_a_bound_every_message_is_kept(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.db") as store:
        for n in range(5):
            store.append("a", [_message(n)])
        assert store.load("a") == [_message(n) for n in range(5)]


def test_expire_deletes_what_was_last_written_before_except_what_is_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    with HistoryStore(path) as store:
        store.append("old", [_message(0)])
        store.append("live", [_message(1)])
        cut = time.time() + 0.001
        time.sleep(0.01)
        store.append("recent", [_message(2)])
        assert store.expire(cut, keep={"live"}) == ["old"]
        assert store.expire(cut, keep={"live"}) == []
        assert (store.exists("old"), store.exists("live"), store.exists("recent")) == (
            False, True, True)
        assert store.load("old") == []
    assert _rows(path, "messages") == 2


def test_expire_works_in_batches_of_expire_batch(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.db") as store:
        store.append_batch([(f"c{n}", [_message(n)]) for n in range(EXPIRE_BATCH + 5)])
        later = time.time() + 1
        assert len(store.expire(later)) == EXPIRE_BATCH
        assert len(store.expire(later)) == 5
        assert store.expire(later) == []


async def test_a_pass_forgets_unused_and_expired_ids_but_not_live_or_written_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    with HistoryStore(path) as history:
        owners = ConversationOwners(path)
        try:
            unused, expired, live, kept = (owners.create("o") for _ in range(4))
            history.append(expired, [_message(0)])
            history.append(live, [_message(1)])
            cut = time.time() + 0.001
            await anyio.sleep(0.01)
            history.append(kept, [_message(2)])  # written after the cut
            assert await expire_conversations(history, owners, {live}, cut) == (1, 2)
            assert [owners.owned_by(c, "o") for c in (unused, expired, live, kept)] == [
                False, False, True, True]
            assert [history.exists(c) for c in (expired, live, kept)] == [False, True, True]
            assert await expire_conversations(history, owners, {live}, cut) == (0, 0)
        finally:
            owners.close()


def test_storing_fewer_messages_than_a_turn_reads_is_refused() -> None:
    with pytest.raises(ValidationError) as error:
        ChatConfig(max_history_messages=300, max_stored_messages=200)
    assert ("max_stored_messages (200) must be at least max_history_messages (300): a turn"
            " reads that many") in str(error.value)
    assert ChatConfig().max_stored_messages == 1000
    assert ChatConfig().retention_days is None


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorChild]:
    child = SimulatorChild(directory=tmp_path_factory.mktemp("retention-sim"))
    yield child
    child.stop()


RETENTION = 1.5  # seconds: the server sweeps every 0.5 s


async def test_the_server_deletes_idle_conversations_after_retention_days(
    tmp_path: Path, simulator: SimulatorChild
) -> None:
    history = tmp_path / "history.sqlite3"
    config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                          chat={"history_db": str(history),
                                "retention_days": RETENTION / 86400})
    server = ServerChild(config)
    try:
        async with await connect(server.ws_url) as gone:
            envelopes = await chat(gone, "to be forgotten")
        forgotten = envelopes[0]["chunk"]["metadata"]["conversation_id"]
        async with await connect(server.ws_url) as ws:
            held = (await chat(ws, "kept while open"))[0]["chunk"]["metadata"][
                "conversation_id"]
            with anyio.fail_after(20):
                while _conversation_rows(history, forgotten):
                    await anyio.sleep(0.2)
            await anyio.sleep(2 * RETENTION)  # passes enough to expire the held one too
            assert _conversation_rows(history, held) == 1  # its socket still holds it
            envelopes = await chat(ws, "still there")
            assert envelopes[-1]["status"] == "complete"
            assert envelopes[-1]["chunk"]["conversation_id"] == held
            await send(ws, chat_frame("back", request_id="r1", conversation_id=forgotten))
            refused = await receive(ws)
        assert refused["chunk"]["error_type"] == "unknown_conversation"
        assert _message_rows(history, forgotten) == 0
    finally:
        assert server.stop() == 0, server.output


def _conversation_rows(path: Path, conversation_id: str) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM conversations WHERE id = ?",
                              (conversation_id,)).fetchone()
    return int(count)


def _message_rows(path: Path, conversation_id: str) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?",
                              (conversation_id,)).fetchone()
    return int(count)
