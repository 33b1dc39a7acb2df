"""Conversation ids a refused request was issued: a real ``serve`` whose conversations are all in
use, its owners' table read from the real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

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


@pytest.fixture
def full_server(tmp_path: Path) -> Iterator[tuple[ServerChild, Path, SimulatorChild]]:
    simulator = SimulatorChild(directory=tmp_path)
    try:
        child = ServerChild(write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                                         server={"max_conversations": 1}))
        yield child, tmp_path / "history.sqlite3", simulator
        assert child.stop() == 0, child.output
    finally:
        simulator.stop()


def _issued(history_db: Path) -> list[str]:
    with sqlite3.connect(history_db) as db:
        return [row[0] for row in db.execute(
            "SELECT conversation_id FROM conversation_owners ORDER BY created_at")]


async def test_chats_refused_for_want_of_room_issue_one_id_per_socket_not_one_per_frame(
    full_server: tuple[ServerChild, Path, SimulatorChild],
) -> None:
    server, history_db, simulator = full_server
    simulator.configure(faults={"first_byte_delay": 30.0})
    async with await connect(server.ws_url) as holder:
        # A running turn holds the only slot (a socket merely on a conversation holds none).
        await send(holder, chat_frame("holding the only slot", request_id="slow"))
        first = (await receive(holder))["chunk"]["metadata"]["conversation_id"]
        async with await connect(server.ws_url) as late:
            for number in range(5):
                await send(late, chat_frame("no room", request_id=f"r{number}"))
                assert await receive(late) == {
                    "request_id": f"r{number}", "status": "error",
                    "chunk": {"error": "all 1 conversations are in use; try again later",
                              "error_type": "too_many_conversations"},
                }
            assert len(_issued(history_db)) == 2
            simulator.configure(faults={"first_byte_delay": 0.0})
            await holder.close()
            for _ in range(100):  # until the server has seen the holder's socket close
                envelopes = await chat(late, "room now")
                if envelopes[-1]["status"] == "complete":
                    break
                await anyio.sleep(0.05)
            assert envelopes[-1]["status"] == "complete"
            second = envelopes[-1]["chunk"]["conversation_id"]
    assert _issued(history_db) == [first, second]
