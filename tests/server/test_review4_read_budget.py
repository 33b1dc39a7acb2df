"""Review 4: what a peer sends beyond its read budget waits, unparsed, and then arrives whole.

A peer over its budget (server/_ws_protocol.py) is not read until the budget has refilled, and
what was read but not parsed is parsed in slices later: every message must still reach the app
once, whole and in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from server._ws_protocol import MESSAGE_COST, READ_BURST
from tests.server_harness import ServerChild, connect, offline_server, receive


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerChild]:
    with offline_server(tmp_path) as child:
        yield child


async def test_messages_beyond_the_read_budget_arrive_whole_once_and_in_order(
    server: ServerChild,
) -> None:
    # 300 frames of ~20 KB (each counted ~36 KiB): 2.6 times the burst, so the server stops
    # reading and parsing midway, with frames cut across its 4 KiB slices, more than once.
    count, pad = 300, 20_000
    assert count * (pad + MESSAGE_COST) > 2.5 * READ_BURST
    ws = await connect(server.ws_url)
    try:
        for number in range(count):
            # An unknown action: answered with an error addressed to its request id.
            await ws.send(json.dumps({"action": "nope", "request_id": f"r{number}",
                                      "pad": f"{number:05d}" * (pad // 5)}))
        answered = []
        with anyio.fail_after(60):
            for _ in range(count):
                envelope = await receive(ws)
                answered.append((envelope["request_id"], envelope["status"]))
    finally:
        await ws.close()
    assert answered == [(f"r{number}", "error") for number in range(count)]
