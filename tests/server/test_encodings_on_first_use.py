"""A token encoding is loaded when a turn first needs it, not at start (issue 11 item 5).

An encoding costs ~45 MB resident once loaded (o200k_base; a second of CPU to load): the server
starts without one, and the first turn loads only the encoding of the model it counts for.
"""

from __future__ import annotations

from pathlib import Path

from tests.server_harness import ServerChild, SimulatorChild, chat, connect, write_config


def _loaded(output: str) -> list[str]:
    marker = "token encoding "
    return [line.split(marker, 1)[1].split(" ", 1)[0]
            for line in output.splitlines() if marker in line and " loaded in " in line]


async def test_the_encoding_is_loaded_by_the_first_turn_and_only_the_models_one(
        tmp_path: Path) -> None:
    simulator = SimulatorChild({"models": {"gpt-4": {"context_window": 8192}}}, directory=tmp_path)
    config = write_config(tmp_path, simulator_url=simulator.url, model="gpt-4", mcp_servers={})
    server = ServerChild(config)
    try:
        at_start = _loaded(server.output)
        async with await connect(server.ws_url) as ws:
            first = await chat(ws, "hello")
            second = await chat(ws, "hello again")
    finally:
        code = server.stop()
        simulator.stop()
    assert code == 0, server.output
    assert at_start == []
    assert _loaded(server.output) == ["cl100k_base"]
    assert (first[-1]["status"], second[-1]["status"]) == ("complete", "complete")
