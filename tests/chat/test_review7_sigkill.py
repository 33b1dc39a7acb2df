"""Review 7: a real server SIGKILLed in the middle of a turn's tool call, then restarted on the
same database: the history holds whole steps only (and, since review 8, the killed turn's user
message, written before its model was called), and the conversation goes on."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import anyio

from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    receive,
    send,
    text_of,
    write_config,
)


def _rows(db: Path, conversation_id: str) -> list[str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT message FROM messages WHERE conversation_id = ? ORDER BY seq",
            (conversation_id,)).fetchall()
    connection.close()
    labels = []
    for (text,) in rows:
        message = json.loads(text)
        kind = "call" if message.get("tool_calls") else str(message.get("content"))[:12]
        labels.append(f"{message['role']}:{kind}")
    return labels


async def test_a_server_killed_during_a_tool_call_keeps_whole_steps_and_goes_on(
    tmp_path: Path,
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    server: ServerChild | None = None
    try:
        config = write_config(tmp_path, simulator_url=simulator.url)
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        first = await chat(ws, 'call add {"a": 2, "b": 3}')
        conversation_id = first[0]["chunk"]["metadata"]["conversation_id"]
        frame = chat_frame('call sleep {"seconds": 30}', conversation_id=conversation_id)
        await send(ws, frame)
        with anyio.fail_after(20):
            while (await receive(ws))["chunk"].get("type") != "tool_call_started":
                pass
        server.stop(signal.SIGKILL)
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        last = await chat(ws, "and now?", conversation_id=conversation_id)
        assert last[-1]["status"] == "complete", last[-1]
        assert text_of(last).startswith("Echo: and now?")
        server.stop()
        server = None
        assert _rows(tmp_path / "history.sqlite3", conversation_id) == [
            'user:call add {"a', "assistant:call", "tool:5.0", "assistant:Tool add ret",
            'user:call sleep {', "user:and now?", "assistant:Echo: and no"]
    finally:
        if server is not None:
            server.kill()
        simulator.stop()
