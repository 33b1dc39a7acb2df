"""Resident memory of ``mcp-backend serve`` on its built-in defaults (issue 11, item 5).

A real ``mcp-backend serve`` started in an empty directory with no API key: the built-in defaults,
that is demo mode (the simulator and the demo MCP server run as child processes of their own;
only the server's own process is measured). Its RSS (``VmRSS`` of ``/proc/PID/status``) is read:

* after start (``/health`` answers, then ``SETTLE`` s);
* after the first turn (the first count loads the model's token encoding), with that turn's time
  to the first text frame and to its end, against the second turn's;
* after ``TURNS`` turns, ``SOCKETS`` sockets (one conversation each) running turns back to back.

A second table says what the RSS after start is made of: a fresh interpreter imports, layer by
layer, what the server imports at start, and the RSS each layer adds is printed (the rest of the
server's figure is what its start-up builds: actors, clients, threads).

Last line: ``rss after start: N MiB (target 100)``.

Run: ``.venv/bin/python -m benchmarks.memory [--turns 100] [--sockets 10]``
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from websockets.asyncio.client import ClientConnection

from benchmarks._report import table
from tests.server_harness import (
    ServerChild,
    _Child,
    chat_frame,
    connect,
    receive,
    send,
    server_env,
)

SETTLE = 1.0
TARGET_MIB = 100
TURN_TIMEOUT = 60.0


#: What actors.mcp imports of the mcp SDK (its client half, not its server half), run as a file
#: so that the row holds the SDK's modules and none of ours.
_MCP_CLIENT_HALF = str(Path(__file__).resolve().parents[1] / "actors" / "mcp" / "_sdk.py")

#: (label, modules) in import order: each row is what importing its modules adds to the RSS.
LAYERS: list[tuple[str, list[str]]] = [
    ("Python 3.11 itself", []),
    ("anyio, pydantic", ["anyio", "pydantic"]),
    ("starlette, uvicorn, uvloop, httptools, websockets (and asyncio, ssl, email)",
     ["starlette.applications", "starlette.staticfiles", "uvicorn", "uvicorn.loops.uvloop",
      "uvicorn.protocols.http.httptools_impl",
      "uvicorn.protocols.websockets.websockets_impl"]),
    ("httpx2, httpcore2 (and trio, which httpcore2 imports when installed: a dev dependency)",
     ["httpx2", "httpcore2"]),
    ("openai SDK (its pydantic types, aiohttp)", ["openai"]),
    ("mcp SDK, its client half only (mcp_types: its pydantic types of two protocol versions)",
     [_MCP_CLIENT_HALF]),
    ("prometheus_client, yaml, msgspec, sqlite3, dotenv",
     ["prometheus_client", "yaml", "msgspec", "sqlite3", "dotenv"]),
    ("the simulator's launcher (demo mode starts it as a child process)", ["simulator.process"]),
    ("ours: runtime, actors, server", ["server.cli", "server.app"]),
]

_LAYERS_SCRIPT = """
import importlib, importlib.util, json, sys, warnings
warnings.simplefilter("ignore")
def load(module):
    if not module.endswith(".py"):
        return importlib.import_module(module)
    spec = importlib.util.spec_from_file_location("_layer_" + str(abs(hash(module))), module)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
rows, last = [], rss()
for label, modules in json.loads(sys.argv[1]):
    for module in modules:
        load(module)
    now = rss()
    rows.append([label, round(now - (last if rows else 0), 1), round(now, 1)])
    last = now
print(json.dumps(rows))
"""


def import_layers() -> list[list[object]]:
    """RSS added by each of :data:`LAYERS`, imported in order by a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", _LAYERS_SCRIPT, json.dumps(LAYERS)],
                            capture_output=True, text=True, check=True, timeout=120)
    rows: list[list[object]] = json.loads(result.stdout)
    return rows


def rss_mib(pid: int) -> float:
    """``VmRSS`` of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class DefaultServer(ServerChild):
    """``mcp-backend serve --port 0`` in ``directory`` (no config file there: built-in defaults),
    without API keys (demo mode); ready once ``/health`` answers."""

    def __init__(self, directory: Path) -> None:
        _Child.__init__(self, [sys.executable, "-m", "server", "serve", "--port", "0"],
                        env=server_env(), cwd=directory,
                        banner=re.compile(r"mcp-backend listening on (http://\S+)"))
        self.wait_banner()
        port = self.url.rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws/chat"
        self.wait_healthy()


async def timed_turn(ws_url: str, text: str) -> tuple[float, float]:
    """One streaming turn on a new socket: (seconds to the first text frame, to the end)."""
    async with await connect(ws_url) as ws:
        return await _turn(ws, text)


async def _turn(ws: ClientConnection, text: str) -> tuple[float, float]:
    frame = chat_frame(text)
    started = time.perf_counter()
    await send(ws, frame)
    first = 0.0
    with anyio.fail_after(TURN_TIMEOUT):
        while True:
            envelope = await receive(ws, TURN_TIMEOUT)
            if envelope.get("request_id") != frame["request_id"]:
                continue
            status = envelope["status"]
            if status == "chunk" and not first and envelope["chunk"].get("type") == "text":
                first = time.perf_counter() - started
            if status == "error":
                raise RuntimeError(f"turn failed: {envelope}")
            if status == "complete":
                return first, time.perf_counter() - started


async def run_turns(ws_url: str, turns: int, sockets: int) -> None:
    """``turns`` turns over ``sockets`` sockets, back to back on each."""
    per_socket = [turns // sockets + (1 if i < turns % sockets else 0) for i in range(sockets)]

    async def one(count: int, index: int) -> None:
        async with await connect(ws_url) as ws:
            for number in range(count):
                await _turn(ws, f"socket {index} question {number}: say something")

    async with anyio.create_task_group() as group:
        for index, count in enumerate(per_socket):
            group.start_soon(one, count, index)


async def measure(turns: int, sockets: int) -> list[list[object]]:
    with tempfile.TemporaryDirectory(prefix="mcp-backend-memory-") as directory:
        server = DefaultServer(Path(directory))
        try:
            await anyio.sleep(SETTLE)
            rows: list[list[object]] = [["after start", round(rss_mib(server.pid), 1), "", ""]]
            first, total = await timed_turn(server.ws_url, "hello")
            rows.append(["after the first turn", round(rss_mib(server.pid), 1),
                         round(first * 1000, 1), round(total * 1000, 1)])
            first, total = await timed_turn(server.ws_url, "hello again")
            rows.append(["after the second turn", round(rss_mib(server.pid), 1),
                         round(first * 1000, 1), round(total * 1000, 1)])
            await run_turns(server.ws_url, turns - 2, sockets)
            rows.append([f"after {turns} turns ({sockets} sockets)",
                         round(rss_mib(server.pid), 1), "", ""])
        finally:
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--sockets", type=int, default=10)
    options = parser.parse_args(argv)
    rows = anyio.run(measure, options.turns, options.sockets)
    print("mcp-backend serve, built-in defaults (demo mode), the server's process only")
    print()
    print(table(["moment", "RSS MiB", "turn's first text ms", "turn ms"], rows))
    print()
    print("What is imported at start, layer by layer (a fresh interpreter)")
    print()
    print(table(["layer", "adds MiB", "RSS MiB"], import_layers()))
    print()
    print(f"rss after start: {rows[0][1]:.0f} MiB (target {TARGET_MIB})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
