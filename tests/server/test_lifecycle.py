"""End to end: starting, stopping and restarting the server and its MCP servers."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    children_running,
    connect,
    http_json,
    pid_alive,
    receive,
    send,
    tool_events,
    until_end,
    write_config,
)

LONG_TEXT = " ".join(f"word{i}" for i in range(400))


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorChild]:
    sim = SimulatorChild(directory=tmp_path)
    yield sim
    sim.stop()


async def test_history_survives_a_server_restart(tmp_path: Path, simulator: SimulatorChild) -> None:
    config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={})
    first = ServerChild(config)
    try:
        async with await connect(first.ws_url) as ws:
            fresh = await chat(ws, "remember this")
            earlier = await chat(ws, "and this")
    finally:
        assert first.stop(signal.SIGINT) == 0, first.output  # Ctrl+C is as graceful as SIGTERM
    conversation = fresh[0]["chunk"]["metadata"]["conversation_id"]

    second = ServerChild(config)
    try:
        async with await connect(second.ws_url) as ws:
            resumed = await chat(ws, "and this", conversation_id=conversation)
        async with await connect(second.ws_url) as ws:
            new = await chat(ws, "and this")
    finally:
        assert second.stop() == 0, second.output
    assert resumed[-1]["status"] == "complete"
    # Three turns of history make a longer prompt than two, and than none.
    assert resumed[-1]["chunk"]["usage"]["prompt_tokens"] > (
        earlier[-1]["chunk"]["usage"]["prompt_tokens"]
    )
    assert new[-1]["chunk"]["usage"]["prompt_tokens"] < (
        earlier[-1]["chunk"]["usage"]["prompt_tokens"]
    )


async def test_sigterm_cancels_a_turn_past_the_timeout_and_exits_0_in_demo_mode(
    tmp_path: Path,
) -> None:
    """No API key: the simulator child serves; SIGTERM drains, stops it and exits 0."""
    config = write_config(tmp_path, simulator_url=None, simulator="auto", mcp_servers={},
                          server={"shutdown_timeout": 1})
    control = "sim-control-token-6e0a"  # the demo simulator's control endpoints need it
    server = ServerChild(config, env={"SIMULATOR_CONTROL_TOKEN": control})
    try:
        health = server.health()
        assert health["simulated"] is True
        assert list(health["providers"]) == ["simulator"]
        simulators = children_running(server.pid, "simulator")
        assert len(simulators) == 1
        assert "DEMO MODE" in server.output
        sim_url = next(line for line in server.lines if "simulator child process" in line
                       ).rsplit(" ", 1)[1]
        http_json(sim_url + "/_sim/config", method="POST",
                  body={"faults": {"chunk_delay": 0.05}},
                  headers={"Authorization": f"Bearer {control}"})

        async with await connect(server.ws_url) as ws:
            frame = chat_frame(LONG_TEXT)  # about 20 s of answer
            await send(ws, frame)
            assert (await receive(ws))["status"] == "processing"
            os.kill(server.pid, signal.SIGTERM)
            with anyio.fail_after(8):
                envelopes = await until_end(ws, frame["request_id"])
            assert envelopes[-1]["status"] == "error"
            assert envelopes[-1]["chunk"]["error_type"] == "shutting_down"
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws, timeout=5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
        assert server.stop(timeout=15) == 0, server.output
        assert not pid_alive(simulators[0])
    finally:
        server.kill()


async def test_sigterm_answers_a_clear_queued_behind_a_turn_and_refuses_new_ones_before_closing(
    tmp_path: Path, simulator: SimulatorChild
) -> None:
    simulator.configure(faults={"chunk_delay": 0.05})
    config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                          server={"shutdown_timeout": 10})
    server = ServerChild(config)
    envelopes: list[dict[str, Any]] = []
    try:
        async with await connect(server.ws_url) as ws:
            await send(ws, chat_frame(" ".join(f"w{i}" for i in range(40)), request_id="t1"))
            processing = await receive(ws)
            conversation = processing["chunk"]["metadata"]["conversation_id"]
            await send(ws, {"action": "clear_history", "request_id": "c1"})  # waits behind t1
            await send(ws, {"action": "ping", "request_id": "read"})
            envelopes += await until_end(ws, "read")  # the server has read c1 too
            os.kill(server.pid, signal.SIGTERM)
            for _ in range(200):
                if "shutting down: draining connections" in server.output:
                    break
                await anyio.sleep(0.05)
            await send(ws, {"action": "clear_history", "request_id": "c2"})
            with pytest.raises(ConnectionClosed) as closed, anyio.fail_after(20):
                for _ in range(1000):
                    envelopes.append(await receive(ws))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert server.stop(timeout=15) == 0, server.output
    finally:
        server.kill()
    finals = {e["request_id"]: e for e in envelopes if e["status"] in ("complete", "error")}
    assert finals["t1"]["status"] == "complete"
    assert finals["c1"] == {"request_id": "c1", "status": "complete",
                            "chunk": {"type": "history_cleared", "conversation_id": conversation}}
    assert finals["c2"] == {"request_id": "c2", "status": "error",
                            "chunk": {"error": "the server is shutting down",
                                      "error_type": "shutting_down"}}


async def test_mcp_server_killed_mid_session_is_restarted(
    tmp_path: Path, simulator: SimulatorChild
) -> None:
    config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={
        "demo": {"command": sys.executable, "args": ["-m", "server.demo_mcp_server"]},
    })
    server = ServerChild(config)
    try:
        async with await connect(server.ws_url) as ws:
            first = await chat(ws, 'call add {"a": 1, "b": 1}')
            assert tool_events(first)[1]["data"]["is_error"] is False
            demo = children_running(server.pid, "demo_mcp_server")
            assert len(demo) == 1
            os.kill(demo[0], signal.SIGKILL)

            # The turn still ends once; the tool result may be an error while it restarts.
            during = await chat(ws, 'call add {"a": 2, "b": 2}')
            assert during[-1]["status"] == "complete"

            with anyio.fail_after(15):
                while True:
                    health = server.health()["mcp_servers"]["demo"]
                    if health["state"] == "ready" and health["restarts"] >= 1:
                        break
                    await anyio.sleep(0.1)
            after = await chat(ws, 'call add {"a": 3, "b": 4}')
            finished = tool_events(after)[1]["data"]
            assert finished["is_error"] is False
            assert "7" in finished["result_preview"]
    finally:
        assert server.stop() == 0, server.output


async def test_an_mcp_server_that_cannot_start_degrades_health_but_chat_works(
    tmp_path: Path, simulator: SimulatorChild
) -> None:
    config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={
        "broken": {"command": str(tmp_path / "no-such-server")},
    })
    server = ServerChild(config)
    try:
        health = server.health()
        assert health["status"] == "degraded"
        assert health["mcp_servers"]["broken"]["state"] != "ready"
        assert health["mcp_servers"]["broken"]["error"]
        async with await connect(server.ws_url) as ws:
            assert (await chat(ws, "hello"))[-1]["status"] == "complete"
    finally:
        assert server.stop() == 0, server.output
