"""``serve --log-format json``: one JSON object a line, redacted like the text lines."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server._logging import LOG_FORMAT_ENV, configure_logging
from tests.server_harness import (
    ROOT,
    SimulatorChild,
    _Child,
    chat,
    connect,
    http_get,
    server_env,
    write_config,
)

TOKEN = "sec-token-5c1d09e2b7"
KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8J9k0" * 2


def _entries(output: str) -> list[dict[str, object]]:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines
    entries = [json.loads(line) for line in lines]  # a line that is not JSON fails here
    assert all(isinstance(entry, dict) for entry in entries)
    return entries


@pytest.mark.anyio
async def test_a_json_server_writes_only_json_lines_with_no_token_and_no_query(
    tmp_path: Path,
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    try:
        config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={})
        child = _Child(
            [sys.executable, "-m", "server", "serve", "--config", str(config), "--port", "0",
             "--log-format", "json"],
            env=server_env({"MCP_BACKEND_TOKEN": TOKEN}),
            banner=re.compile(r"mcp-backend listening on (http://[0-9.]+:\d+)"))
        try:
            url = child.wait_banner()
            status, _, _ = http_get(f"{url}/health?token={TOKEN}")
            assert status == 200
            async with await connect(url.replace("http", "ws") + "/ws/chat",
                                     token=TOKEN) as ws:
                assert (await chat(ws, "hello"))[-1]["status"] == "complete"
        finally:
            assert child.stop() == 0, child.output
    finally:
        simulator.stop()
    entries = _entries(child.output)
    assert TOKEN not in child.output
    assert all(set(entry) >= {"time", "level", "logger", "message"} for entry in entries)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", str(entry["time"]))
               for entry in entries)
    messages = [str(entry["message"]) for entry in entries]
    assert f"mcp-backend listening on {url}" in messages
    assert any(m.endswith('"GET /health?[query omitted] HTTP/1.1" 200') for m in messages), messages


def test_a_json_line_carries_its_traceback_redacted_on_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_BACKEND_WORKER", "3")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        try:
            raise RuntimeError(f"upstream refused key {KEY}")
        except RuntimeError:
            logging.getLogger("tests.json").exception("call failed with %s", KEY)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert KEY not in err
    [entry] = _entries(err)
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "tests.json"
    assert entry["worker"] == 3
    assert entry["message"] == "call failed with [REDACTED]"
    exception = str(entry["exception"])
    assert exception.startswith("Traceback (most recent call last):\n")
    assert exception.endswith("RuntimeError: upstream refused key [REDACTED]")


def test_an_unknown_log_format_in_the_environment_stops_the_start_naming_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "check-config"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False, env=server_env({LOG_FORMAT_ENV: "yaml"}))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "MCP_BACKEND_LOG_FORMAT: unknown log format 'yaml' (expected one of: text, json)")
