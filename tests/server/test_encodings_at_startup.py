"""The server loads its configured models' token encodings before it answers (issue 11 item 5).

A first load parses a few MB holding the GIL for seconds; done in the first turn it froze every
socket and ``/health``. Only the encodings of configured models are loaded.
"""

from __future__ import annotations

from pathlib import Path

from tests.server_harness import ServerChild, SimulatorChild, chat, connect, write_config


async def test_the_configured_models_encodings_are_loaded_before_the_server_listens(
        tmp_path: Path) -> None:
    simulator = SimulatorChild({"models": {"gpt-4": {"context_window": 8192}}}, directory=tmp_path)
    config = write_config(tmp_path, simulator_url=simulator.url, model="gpt-4", mcp_servers={})
    server = ServerChild(config)
    try:
        output = server.output
        async with await connect(server.ws_url) as ws:
            ends = await chat(ws, "hello")
    finally:
        code = server.stop()
        simulator.stop()
    assert code == 0, server.output
    loaded = [line for line in output.splitlines() if "token encodings loaded" in line]
    assert [line.split("token encodings loaded: ", 1)[1] for line in loaded] == ["cl100k_base"]
    assert output.index("token encodings loaded") < output.index("mcp-backend listening on")
    assert ends[-1]["status"] == "complete", ends[-1]
