"""Review 4: a turn refused before its model answered anything, end to end: a real ``serve``,
a real simulator, the history read from the real SQLite file.

Input tokens cost $1000 per million and a turn may spend $1 (``chat.max_cost_per_turn``): a
2000-word message is refused by the ledger before anything is sent. Before, the refused message
stayed in the history, so the next turn carried it and was refused too (or paid for it).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.server_harness import ServerChild, SimulatorChild, chat, connect, write_config


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerChild]:
    simulator = SimulatorChild(directory=tmp_path)
    try:
        path = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                            chat={"max_cost_per_turn": 1.0})
        config = yaml.safe_load(path.read_text())
        config["llm"]["providers"]["sim"]["prices"] = {
            "gpt-4o-mini": {"input": 1000.0, "output": 0.0}}
        path.write_text(yaml.safe_dump(config))
        child = ServerChild(path)
        yield child
        assert child.stop() == 0, child.output
    finally:
        simulator.stop()


def _stored(history_db: Path, conversation_id: str) -> list[dict[str, str]]:
    with sqlite3.connect(history_db) as db:
        return [json.loads(row[0]) for row in db.execute(
            "SELECT message FROM messages WHERE conversation_id = ? ORDER BY seq",
            (conversation_id,))]


async def test_a_turn_refused_at_the_cost_limit_is_not_kept_and_the_next_turn_is_served(
    server: ServerChild, tmp_path: Path,
) -> None:
    async with await connect(server.ws_url) as ws:
        refused = await chat(ws, " ".join(["expensive"] * 2000), request_id="refused")
        conversation = refused[0]["chunk"]["metadata"]["conversation_id"]
        assert [e["status"] for e in refused] == ["processing", "error"]
        assert refused[-1]["chunk"]["error_type"] == "cost_limit"
        assert _stored(tmp_path / "history.sqlite3", conversation) == []
        served = await chat(ws, "thanks", request_id="next")
    assert served[-1]["status"] == "complete"
    assert served[-1]["chunk"]["conversation_id"] == conversation
    assert served[-1]["chunk"]["usage"]["prompt_tokens"] < 100
    assert [m["content"] for m in _stored(tmp_path / "history.sqlite3", conversation)] == [
        "thanks", "Echo: thanks"]
