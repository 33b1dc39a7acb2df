"""Review 4: how many chat sockets one server keeps open (``server.max_connections``), and how
many turns it runs or queues over all of them (``server.max_turns_in_flight``).

Before, nothing bounded them: measured on a real server, 250 idle sockets of one client cost
+7.0 MiB of RSS (28.8 KiB each), each a file descriptor, and each may hold max_concurrent_turns
turns of up to max_message_bytes (the same 250 sockets with 4 turns of 60 KB each: +106.7 MiB).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    http_get,
    receive,
    send,
    until_end,
    write_config,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerChild]:
    simulator = SimulatorChild(directory=tmp_path)
    try:
        child = ServerChild(write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                                         server={"max_connections": 3}))
        yield child
        assert child.stop() == 0, child.output
    finally:
        simulator.stop()


async def test_a_socket_beyond_max_connections_is_closed_with_try_again_later(
    server: ServerChild,
) -> None:
    sockets = [await connect(server.ws_url) for _ in range(3)]
    try:
        for ws in sockets:
            assert (await chat(ws, "hello"))[-1]["status"] == "complete"
        async with await connect(server.ws_url) as refused:
            with anyio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                await refused.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1013, "more than 3 connections; try again later")
        status, _, body = http_get(server.url + "/metrics")
        assert status == 200
        assert "mcp_backend_websockets_refused_total 1.0" in body
        await sockets.pop().close()
        envelopes: list[dict[str, object]] = []
        for _ in range(100):  # until the server has seen that socket close
            async with await connect(server.ws_url) as late:
                try:
                    envelopes = await chat(late, "room now")
                except ConnectionClosed:
                    await anyio.sleep(0.05)
                    continue
            break
        assert [e["status"] for e in envelopes][-1:] == ["complete"]
        assert (await chat(sockets[0], "still served"))[-1]["status"] == "complete"
    finally:
        for ws in sockets:
            await ws.close()


@pytest.fixture
def busy_server(tmp_path: Path) -> Iterator[tuple[ServerChild, SimulatorChild]]:
    simulator = SimulatorChild(directory=tmp_path)
    try:
        child = ServerChild(write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                                         server={"max_turns_in_flight": 2}))
        yield child, simulator
        assert child.stop() == 0, child.output
    finally:
        simulator.stop()


async def test_a_turn_beyond_max_turns_in_flight_is_refused_before_it_starts(
    busy_server: tuple[ServerChild, SimulatorChild],
) -> None:
    # Before, every socket's max_concurrent_turns turns ran or waited at once, each holding its
    # message (up to max_message_bytes) for up to the turn's deadline.
    server, simulator = busy_server
    simulator.configure(faults={"first_byte_delay": 30.0})
    holders = [await connect(server.ws_url) for _ in range(2)]
    try:
        for number, ws in enumerate(holders):
            await send(ws, chat_frame("hold a slot", request_id=f"slow{number}"))
            assert (await receive(ws))["status"] == "processing"
        async with await connect(server.ws_url) as late:
            await send(late, chat_frame("one too many", request_id="late"))
            assert await receive(late) == {
                "request_id": "late", "status": "error",
                "chunk": {"error": "the server is busy with 2 requests; try again shortly",
                          "error_type": "overloaded"}}
            await send(holders[0], {"action": "cancel", "request_id": "slow0"})
            assert (await until_end(holders[0], "slow0"))[-1]["chunk"]["error_type"] == (
                "cancelled")
            simulator.configure(faults={"first_byte_delay": 0.0})
            assert (await chat(late, "room now"))[-1]["status"] == "complete"
    finally:
        for ws in holders:
            await ws.close()
