"""Review 8: ``/health`` against an MCP server listing many tools with long names.

``/health`` needs no token on loopback and is polled by load balancers: it listed every tool
name a server sent, raw, and every name left out of the offer. 16,384 tools of 60 characters
made each poll 2 MB (16 ms); 1,000 names of 10,000 characters, 10 MB (50 ms).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from actors.mcp._health import HEALTH_NAME_CHARS, HEALTH_NAMES
from tests.server_harness import ServerChild, SimulatorChild, http_get, write_config


def _ready_health(server: ServerChild) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        status, _, body = http_get(server.url + "/health")
        health: dict[str, Any] = json.loads(body)
        if health["mcp_servers"]["names"]["state"] == "ready" or time.monotonic() > deadline:
            return len(body), health
        time.sleep(0.1)


@pytest.mark.parametrize(("count", "length"), [(16_384, 60), (1_000, 10_000)])
def test_health_lists_a_bounded_number_of_bounded_tool_names(
    tmp_path: Path, count: int, length: int,
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    try:
        server = ServerChild(write_config(tmp_path, simulator_url=simulator.url, mcp_servers={
            "names": {"command": sys.executable,
                      "args": ["-m", "tests.mcp.review8_named_tools_server", str(count),
                               str(length)]}}))
        try:
            size, health = _ready_health(server)
        finally:
            assert server.stop() == 0, server.output
    finally:
        simulator.stop()
    names = health["mcp_servers"]["names"]
    assert names["state"] == "ready"
    assert names["tool_count"] == count
    assert len(names["tools"]) == HEALTH_NAMES
    first = "t00000" + "n" * (length - 6)
    assert names["tools"][0] == (
        first if length <= HEALTH_NAME_CHARS else first[: HEALTH_NAME_CHARS - 1] + "…")
    tools = health["tools"]
    assert tools["offered"] == 128
    assert tools["omitted_count"] == count - 128
    assert len(tools["omitted"]) == min(HEALTH_NAMES, count - 128)
    assert size < 4 * HEALTH_NAMES * HEALTH_NAME_CHARS, size
    # The one line naming what was left out names as many, then the count.
    (line,) = [line for line in server.lines if "MCP tools: offering" in line]
    assert f", ... ({count - 128} in all)" in line
    assert len(line) < 2 * HEALTH_NAMES * 66, len(line)
