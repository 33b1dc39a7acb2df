"""The hostile-MCP-server profile: a real ``serve`` process whose MCP server attacks it.

``mcp-backend serve`` runs with one simulator (its key in the server's environment, the bearer
token in ``MCP_BACKEND_TOKEN``) and :mod:`tests.chaos.hostile_mcp_server` over stdio, whose entry
carries a secret in its ``env``. At the same time: hostile turns make the model call a tool that
returns 2 MB, a tool whose schema pattern is a regex bomb, a tool that never answers, a tool that
writes the secrets to stderr and dies mid-call, and a tool that reports its environment; well-
behaved sockets send plain turns; ``/health`` is polled.

Held: every turn completes (exact counts); ``/health`` answers within 2 s throughout (the bomb is
matched off the event loop); the 2 MB result is cut to ``chat.max_tool_result_chars`` in the
history; the hanging call ends at ``chat.tool_timeout``; no secret (the entry's, the key-shaped
one, the provider key, the bearer token) reaches ``/health``, an envelope, the history or the
log, while the redaction marker shows the stderr tail did arrive; the MCP server's environment is
the SDK's default plus its own ``env``.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp.client.stdio import get_default_environment

from tests.server_harness import (
    Envelope,
    ServerChild,
    SimulatorChild,
    chat,
    connect,
    text_of,
    tool_events,
)

from .hostile_mcp_server import BOMB, KEY_SHAPED, SECRET_ENV

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hostile-mcp-token-5e0b9d27c4"
PROVIDER_KEY = "provider-key-71d3c0a8f6e2"
MCP_SECRET = "mcp-entry-secret-2a9f64be"
OURS = (TOKEN, PROVIDER_KEY)
SECRETS = (*OURS, MCP_SECRET, KEY_SHAPED)
RESULT_CAP = 2000
BIG = 2_000_000  # 1,000 times the cap; 8 MB took 5 to 11 s to cross the pipe on a busy machine
TOOL_TIMEOUT = 10.0
GOOD_SOCKETS = 2
GOOD_TURNS = 6
HEALTH_BOUND_S = 2.0
OWN_ENV = {SECRET_ENV: MCP_SECRET, "LC_CTYPE": "C.UTF-8"}  # LC_CTYPE: see test_actor's twin


def _config(directory: Path, simulator: SimulatorChild) -> Path:
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "max_messages_per_minute": 1000},
        "chat": {"history_db": str(directory / "history.sqlite3"), "tool_timeout": TOOL_TIMEOUT,
                 "max_tool_hops": 2, "max_tool_result_chars": RESULT_CAP},
        "mcpServers": {"hostile": {
            "command": sys.executable, "args": ["-m", "tests.chaos.hostile_mcp_server"],
            "cwd": str(ROOT), "env": OWN_ENV, "call_timeout": 30}},
        "simulator": {"enabled": "never"},
        "llm": {
            "providers": {"sim": {"kind": "openai-compatible",
                                  "base_url": simulator.url + "/v1", "model": "gpt-4o-mini",
                                  "api_key_env": "HOSTILE_PROVIDER_KEY"}},
            "cost": {"db_path": str(directory / "ledger.sqlite3"), "daily_cost_limit": 100.0},
            "request_timeout": 10,
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class HostileMcpRun:
    def __init__(self, server: ServerChild) -> None:
        self.server = server
        self.turns: dict[str, list[Envelope]] = {}
        self.good: list[str] = []
        self.health_latencies: list[float] = []

    async def hostile(self, name: str, text: str) -> None:
        async with await connect(self.server.ws_url, token=TOKEN) as ws:
            self.turns[name] = await chat(ws, text, request_id=name)

    async def well_behaved(self, index: int) -> None:
        async with await connect(self.server.ws_url, token=TOKEN) as ws:
            for turn in range(GOOD_TURNS):
                envelopes = await chat(ws, f"good {index} {turn}")
                self.good.append(envelopes[-1]["status"])

    async def poll_health(self, done: anyio.Event) -> None:
        for _ in range(600):  # 0.1 s apart: a minute at most
            if done.is_set():
                return
            started = time.monotonic()
            status = (await anyio.to_thread.run_sync(self.server.health, TOKEN))["status"]
            self.health_latencies.append(time.monotonic() - started)
            assert status in ("ok", "degraded"), status  # degraded: while 'leak' restarts
            await anyio.sleep(0.1)

    async def run(self) -> None:
        done = anyio.Event()
        # The first turn of a process loads the tokenizer, which holds the GIL for seconds
        # (RELIABILITY.md, "found by the hostile profiles"): not what this profile measures.
        await self.hostile("warm", "warm up")
        async with anyio.create_task_group() as group:
            group.start_soon(self.poll_health, done)
            async with anyio.create_task_group() as load:
                for index in range(GOOD_SOCKETS):
                    load.start_soon(self.well_behaved, index)
                async with anyio.create_task_group() as hostile:
                    hostile.start_soon(self.hostile, "big", f'call big {{"size": {BIG}}}')
                    for n in range(3):
                        hostile.start_soon(self.hostile, f"bomb{n}",
                                           'call match {"code": "' + "a" * 40 + 'b"}')
                    hostile.start_soon(self.hostile, "hang", "call hang {}")
                    hostile.start_soon(self.hostile, "environment", "call environment {}")
                # Last: its death would fail the calls still running on the same process.
                await self.hostile("leak", "call leak {}")
            done.set()


def _finished(envelopes: list[Envelope]) -> dict[str, Any]:
    (finished,) = [e["data"] for e in tool_events(envelopes) if e["type"] == "tool_call_finished"]
    result: dict[str, Any] = finished
    return result


def _history(path: Path, *, without: str = "") -> list[dict[str, Any]]:
    """Every stored message, in order (``without``: but that conversation's)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT message FROM messages WHERE conversation_id != ?"
                          " ORDER BY conversation_id, seq", (without,)).fetchall()
    return [json.loads(row[0]) for row in rows]


def _tool_message(history: list[dict[str, Any]], marker: str) -> str:
    found = [m["content"] for m in history if m["role"] == "tool" and marker in m["content"]]
    assert len(found) == 1, [str(m)[:200] for m in history if m["role"] == "tool"]
    content: str = found[0]
    return content


@pytest.mark.timeout(180)
async def test_a_hostile_mcp_server_never_stalls_leaks_or_bloats_the_server(
        tmp_path: Path) -> None:
    simulator = SimulatorChild({"api_keys": [PROVIDER_KEY]}, directory=tmp_path)
    server = ServerChild(_config(tmp_path, simulator),
                         env={"MCP_BACKEND_TOKEN": TOKEN, "HOSTILE_PROVIDER_KEY": PROVIDER_KEY})
    try:
        with anyio.fail_after(30):
            while server.health(TOKEN)["mcp_servers"]["hostile"]["state"] != "ready":
                await anyio.sleep(0.1)
        run = HostileMcpRun(server)
        with anyio.fail_after(120):
            await run.run()
        with anyio.fail_after(30):  # 'leak' killed it: the supervisor restarts it
            while server.health(TOKEN)["mcp_servers"]["hostile"]["state"] != "ready":
                await anyio.sleep(0.1)
        health = server.health(TOKEN)
    finally:
        code = server.stop()
        simulator.stop()
    print(f"2 MB result in {_finished(run.turns['big'])['duration_ms']} ms; /health at most"
          f" {max(run.health_latencies):.3f} s over {len(run.health_latencies)} checks")

    # Every turn completed, hostile or not.
    assert code == 0, server.output
    assert run.good == ["complete"] * (GOOD_SOCKETS * GOOD_TURNS)
    assert {name: e[-1]["status"] for name, e in run.turns.items()} == dict.fromkeys(
        ["warm", "big", "bomb0", "bomb1", "bomb2", "hang", "leak", "environment"], "complete")
    # The loop stayed free: /health answered in time throughout.
    assert run.health_latencies and max(run.health_latencies) < HEALTH_BOUND_S

    # The 2 MB result: cut for the model and in the history, the turn answered from it.
    big = _finished(run.turns["big"])
    assert (big["is_error"], big["result_preview"]) == (False, "x" * 199 + "…"), big
    assert text_of(run.turns["big"]) == "Tool big returned: " + "x" * 200
    history = _history(tmp_path / "history.sqlite3")
    stored = _tool_message(history, "[Tool result truncated")
    assert stored == "x" * RESULT_CAP + (
        f"\n\n[Tool result truncated: it had {BIG} characters; only the first"
        f" {RESULT_CAP} are shown. Ask the tool for less, or for a part, if you need more.]")
    assert max(len(json.dumps(m)) for m in history) < RESULT_CAP + 400

    # The regex bomb: refused in time, as an error result the model read.
    for n in range(3):
        bomb = _finished(run.turns[f"bomb{n}"])
        assert bomb["is_error"] is True
        assert bomb["result_preview"] == (
            f"Invalid arguments for tool 'match': 'code': '{'a' * 39}…' could not be matched"
            f" against '{BOMB}' in time.")

    # The server that never answers: the call ended at the tool timeout.
    hang = _finished(run.turns["hang"])
    assert hang["is_error"] is True
    assert TOOL_TIMEOUT * 1000 <= hang["duration_ms"] < TOOL_TIMEOUT * 1000 + 5000

    # Secrets on stderr: the tail reached the tool result redacted, nowhere in clear.
    leak = _finished(run.turns["leak"])
    assert leak["is_error"] is True
    leaked = _tool_message(history, "dying: using")
    assert "dying: using [REDACTED] and [REDACTED]" in leaked, leaked
    # The entry's own secret is the server's to tell: 'environment' returns it to the model.
    told = run.turns["environment"][-1]["chunk"]["conversation_id"]
    visible = {
        "health": (json.dumps(health), SECRETS),
        "envelopes": (json.dumps({k: v for k, v in run.turns.items() if k != "environment"}),
                      SECRETS),
        "environment turn": (json.dumps(run.turns["environment"]), OURS),
        "history": (json.dumps(_history(tmp_path / "history.sqlite3", without=told)), SECRETS),
        "environment history": (json.dumps(history), OURS),
        "log": (server.output, SECRETS),
    }
    for where, (text, secrets) in visible.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in the {where}"

    # The server's environment: the SDK's safe default plus its own env, nothing of ours.
    environment = json.loads(_tool_message(history, '"' + SECRET_ENV + '"'))
    assert sorted(environment) == sorted({**get_default_environment(), **OWN_ENV})
    assert environment[SECRET_ENV] == MCP_SECRET
