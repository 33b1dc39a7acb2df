"""Review 5: ``server.max_turns_in_flight`` holds whatever the interleaving of many sockets.

Before, the bound was checked before the turn's conversation claim and its ``processing``
envelope awaited, and the turn counted only after them: frames of many sockets read in one
pass of the event loop each saw the count below the bound and all started (measured below:
24 sockets at once against a bound of 3 started 24 turns, 24 upstream requests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection

from tests.server_harness import (
    Envelope,
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    receive,
    send,
    until_end,
    write_config,
)

BOUND = 3
SOCKETS = 24
OVERLOADED = {"status": "error", "chunk": {
    "error": f"the server is busy with {BOUND} requests; try again shortly",
    "error_type": "overloaded"}}


@pytest.fixture
def busy_server(tmp_path: Path) -> Iterator[tuple[ServerChild, SimulatorChild]]:
    simulator = SimulatorChild(directory=tmp_path)
    try:
        child = ServerChild(write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                                         server={"max_turns_in_flight": BOUND}))
        yield child, simulator
        assert child.stop() == 0, child.output
    finally:
        simulator.stop()


def _until(read: Any, wanted: Any, timeout: float = 10.0) -> Any:
    """Poll ``read()`` until it returns ``wanted`` (the last value after ``timeout``)."""
    deadline = time.monotonic() + timeout
    value = read()
    while value != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


async def _wave(sockets: list[ClientConnection], name: str) -> dict[str, Envelope]:
    """One chat frame on every socket at once; each socket's first envelope, by request id."""
    frames = [chat_frame("hold a slot", request_id=f"{name}{n}") for n in range(len(sockets))]
    async with anyio.create_task_group() as tg:
        for ws, frame in zip(sockets, frames, strict=True):
            tg.start_soon(send, ws, frame)
    first: dict[str, Envelope] = {}
    for ws in sockets:
        envelope = await receive(ws)
        first[envelope["request_id"]] = envelope
    return first


async def test_many_sockets_at_once_never_run_more_than_max_turns_in_flight(
    busy_server: tuple[ServerChild, SimulatorChild],
) -> None:
    server, simulator = busy_server
    simulator.configure(faults={"first_byte_delay": 30.0})  # admitted turns stay running
    sockets = [await connect(server.ws_url) for _ in range(SOCKETS)]
    try:
        # A turn refused at its conversation claim gives its slot back.
        unknown = await chat(sockets[0], "hi", conversation_id="not-issued")
        assert unknown[-1]["chunk"]["error_type"] == "unknown_conversation"
        assert server.health()["connections"]["turns_in_flight"] == 0
        # Wave a ends by cancelling its turns, wave b by closing their sockets; wave c runs on
        # the sockets left and is admitted BOUND turns again: no slot was leaked.
        for number, wave in enumerate(("a", "b", "c"), start=1):
            first = await _wave(sockets, wave)
            admitted = sorted(r for r, e in first.items() if e["status"] == "processing")
            refused = [e for e in first.values() if e["status"] == "error"]
            assert (len(admitted), len(refused)) == (BOUND, len(sockets) - BOUND)
            assert all({k: e[k] for k in ("status", "chunk")} == OVERLOADED for e in refused)
            assert server.health()["connections"]["turns_in_flight"] == BOUND
            # The upstream is asked by exactly the admitted turns (a cancelled turn's request
            # is still counted open there until its delay ends, so arrivals are counted).
            assert _until(lambda: simulator.stats()["total_requests"], number * BOUND) == (
                number * BOUND)
            holders = {request_id: sockets[int(request_id[1:])] for request_id in admitted}
            for request_id, ws in holders.items():
                if wave == "b":
                    await ws.close()
                    sockets.remove(ws)
                    continue
                await send(ws, {"action": "cancel", "request_id": request_id})
                assert (await until_end(ws, request_id))[-1]["chunk"]["error_type"] == (
                    "cancelled")
            assert _until(lambda: server.health()["connections"]["turns_in_flight"], 0) == 0
        assert len(sockets) == SOCKETS - BOUND
        assert simulator.stats()["total_requests"] == 3 * BOUND
        simulator.configure(faults={"first_byte_delay": 0.0})
        assert (await chat(sockets[0], "room now"))[-1]["status"] == "complete"
    finally:
        for ws in sockets:
            await ws.close()
