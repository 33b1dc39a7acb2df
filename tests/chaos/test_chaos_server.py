"""The real server process under chaos: WebSocket clients, two simulated providers, MCP servers.

``mcp-backend serve`` runs as a child process with two simulator processes as providers (keys in
an environment variable and in a key file, both ``sk-chaos-...``), the demo MCP server and
``mcp-server-time``. Concurrent WebSocket clients send streaming and non-streaming turns, tool
turns (the simulator calls a tool when the text says ``call <tool>``), slow tool turns, cancels,
garbage frames, and disconnect mid-stream, while faults are injected from the seed: a 429 storm,
a 5xx burst, mid-stream drops, a provider process killed and restarted, the file key revoked
then rotated, the demo MCP server killed during a tool call.

Accounted for at the end: every turn got ``processing`` first and exactly one ``complete`` or
``error`` last (nothing after it), within its deadline; upstream streams all closed; requests per
minute at each simulator under our limits; ``/health`` back to ``ok``; SIGTERM exits 0 and leaves
no child process (MCP servers included); no key in the server's output.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from websockets.exceptions import ConnectionClosed

from simulator.process import SimulatorProcess
from tests.server_harness import ServerChild, chat_frame, connect, receive, server_env

from .accounting import Books, Operation
from .procfs import alive, descendant_pids

ROOT = Path(__file__).resolve().parents[2]
TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"
REQUEST_TIMEOUT = 5.0
TOOL_TIMEOUT = 3.0
MAX_HOPS = 2
# A turn: a model call per hop plus the last answer, and the tools of each hop.
TURN_DEADLINE = (MAX_HOPS + 1) * REQUEST_TIMEOUT + MAX_HOPS * (TOOL_TIMEOUT + 5.0)
LOAD_S = 18.0
CLIENTS = 10
LIMITS = {"a": 300, "b": 60}


def write_chaos_config(directory: Path, sims: dict[str, SimulatorProcess]) -> Path:
    def provider(name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kind": "openai-compatible", "base_url": sims[name].base_url, "model": "gpt-4o-mini",
            "max_tokens": 32, "timeout": 2.5, "connect_timeout": 1.0,
            "rate_limits": {"requests_per_minute": LIMITS[name]},
            "breaker": {"sliding_window_size": 10, "minimum_number_of_calls": 6,
                        "wait_duration_in_open_state": 2.0,
                        "permitted_calls_in_half_open_state": 2},
        }
        if name == "a":
            entry["api_key_env"] = "CHAOS_SERVER_KEY_A"
        else:
            entry["api_key_file"] = str(directory / "b.key")
        return entry

    config = {
        "server": {"host": "127.0.0.1", "port": 0, "max_messages_per_minute": 10_000,
                   "max_concurrent_turns": 4, "shutdown_timeout": 5},
        "chat": {"history_db": str(directory / "history.sqlite3"), "tool_timeout": TOOL_TIMEOUT,
                 "max_tool_hops": MAX_HOPS},
        "mcpServers": {
            "demo": {"command": sys.executable, "args": ["-m", "server.demo_mcp_server"],
                     "cwd": str(ROOT)},
            "time": {"command": str(TIME_SERVER)},
        },
        "simulator": {"enabled": "never"},
        "llm": {
            "providers": {"a": provider("a"), "b": provider("b")},
            "cost": {"db_path": str(directory / "ledger.sqlite3"), "daily_cost_limit": 50.0},
            "request_timeout": REQUEST_TIMEOUT,
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def key(rng: random.Random) -> str:
    return "sk-chaos-" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                                 for _ in range(32))


class ServerChaos:
    def __init__(self, seed: int, directory: Path) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.directory = directory
        self.books = Books(tolerance_s=5.0)
        self.keys = [key(self.rng), key(self.rng)]
        self.problems: list[str] = []
        self.faults: list[str] = []
        self.server: ServerChild | None = None
        self.sims: dict[str, SimulatorProcess] = {}

    # -- clients ------------------------------------------------------------------------------

    async def client(self, index: int, stop_at: float) -> None:
        rng = random.Random(f"{self.seed}-ws-{index}")
        assert self.server is not None
        ws = await connect(self.server.ws_url)
        try:
            while anyio.current_time() < stop_at:
                kind = rng.choices(
                    ["stream", "plain", "tool", "slow_tool", "cancel", "disconnect", "garbage"],
                    [30, 15, 15, 8, 8, 12, 12])[0]
                if kind == "garbage":
                    await self.garbage(ws, rng)
                    continue
                self.history.setdefault(index, []).append(kind)
                self.current_client = index
                closed = await self.turn(ws, rng, kind, index)
                if closed:
                    await ws.close()
                    ws = await connect(self.server.ws_url)
                await anyio.sleep(rng.uniform(0.05, 0.4))
            await self.drain(ws)
        finally:
            await ws.close()

    async def garbage(self, ws: Any, rng: random.Random) -> None:
        frame = rng.choice(["{", "[]", '{"action": "dance"}', '{"action": "chat", "payload": 5}'])
        op = self.books.begin("ws_garbage", 10.0)
        await ws.send(frame)
        with anyio.move_on_after(10.0):
            envelope = await receive(ws, 10.0)
            self.books.end(op, f"error:{envelope['chunk'].get('error_type')}"
                           if envelope["status"] == "error" else f"unexpected:{envelope}")
        if not op.outcomes:
            self.books.end(op, "watchdog")

    def text_for(self, kind: str, rng: random.Random) -> str:
        if kind == "tool":
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            return rng.choice([f'call add {{"a": {a}, "b": {b}}}',
                               'call get_current_time {"timezone": "UTC"}'])
        if kind == "slow_tool":
            return 'call sleep {"seconds": 1.5}'
        return "chaos " + " ".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 9)))

    async def turn(self, ws: Any, rng: random.Random, kind: str, client: int = -1) -> bool:
        """One turn; returns whether the socket was closed (by us or the server)."""
        request_id = uuid.uuid4().hex
        op = self.books.begin(f"ws_{kind}", TURN_DEADLINE)
        streaming = kind != "plain"
        await ws.send(json.dumps(chat_frame(self.text_for(kind, rng), request_id=request_id,
                                            streaming=streaming)))
        statuses: list[str] = [f"@{anyio.current_time() - self.t0:.1f}",
                               f"client {client} after {self.history.get(client, [])[-4:-1]}"]
        self.traces[op.id] = (request_id, statuses)
        with anyio.move_on_after(TURN_DEADLINE + self.books.tolerance_s + 5.0):
            try:
                while True:
                    envelope = await receive(ws, TURN_DEADLINE + 10.0)
                    if envelope.get("request_id") != request_id:
                        self.stray(envelope)
                        continue
                    statuses.append(envelope["status"])
                    if len(statuses) == 3 and envelope["status"] not in ("processing", "error"):
                        self.problems.append(f"turn {request_id} began with {envelope}")
                    if envelope["status"] == "complete":
                        self.books.end(op, "complete")
                        break
                    if envelope["status"] == "error":
                        self.books.end(op, f"error:{envelope['chunk'].get('error_type')}")
                        break
                    if envelope["status"] == "processing" and kind == "cancel":
                        await ws.send(json.dumps({"action": "cancel", "request_id": request_id}))
                    if envelope["status"] == "chunk" and kind == "disconnect":
                        self.books.end(op, "abandoned")
                        return True
            except ConnectionClosed as closed:
                self.books.end(op, f"closed:{closed.rcvd.code if closed.rcvd else None}")
                return True
        if not op.outcomes:
            self.books.end(op, "watchdog")
        self.finished[request_id] = op
        return False

    def stray(self, envelope: dict[str, Any]) -> None:
        op = self.finished.get(str(envelope.get("request_id")))
        if op is not None:
            self.books.delivered_after_end(op)

    async def drain(self, ws: Any) -> None:
        """Whatever still arrives for a finished turn is a duplicate."""
        with anyio.move_on_after(0.5):
            try:
                while True:
                    self.stray(await receive(ws, 1.0))
            except ConnectionClosed:
                return

    # -- faults -------------------------------------------------------------------------------

    async def faults_loop(self, start_s: float, spacing_s: float) -> None:
        kinds = ["storm_429", "burst_5xx", "midstream", "kill_restart", "key_rotation",
                 "mcp_kill"]
        self.rng.shuffle(kinds)
        await anyio.sleep(start_s)
        for kind in kinds:
            self.faults.append(f"{kind}@{anyio.current_time() - self.t0:.1f}")
            await self.inject(kind)
            await anyio.sleep(spacing_s)

    async def inject(self, kind: str) -> None:
        a, b = self.sims["a"], self.sims["b"]
        if kind == "storm_429":
            await a.configure(faults={"rate_429": 0.7, "retry_after": 1.0})
            await anyio.sleep(2.0)
            await a.configure(faults={"rate_429": 0.0})
        elif kind == "burst_5xx":
            await a.configure(faults={"rate_500": 0.5, "rate_503": 0.4})
            await anyio.sleep(2.0)
            await a.configure(faults={"rate_500": 0.0, "rate_503": 0.0})
        elif kind == "midstream":
            await a.configure(faults={"rate_midstream_drop": 0.3, "rate_midstream_error": 0.2,
                                      "rate_reset": 0.1})
            await anyio.sleep(2.0)
            await a.configure(faults={"rate_midstream_drop": 0.0, "rate_midstream_error": 0.0,
                                      "rate_reset": 0.0})
        elif kind == "kill_restart":
            self.lives.setdefault("a", []).append(await a.stats())
            a.kill()
            await anyio.sleep(1.5)
            await a.restart()
        elif kind == "key_rotation":
            new_key = key(self.rng)
            self.keys.append(new_key)
            await b.configure(api_keys=[new_key])  # revoked...
            await anyio.sleep(1.5)
            (self.directory / "b.key").write_text(new_key)  # ... and rotated
        elif kind == "mcp_kill":
            assert self.server is not None
            demo = self.server.health()["mcp_servers"].get("demo", {})
            if demo.get("pid"):
                await anyio.sleep(0.2)
                os.kill(int(demo["pid"]), signal.SIGKILL)

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> None:
        self.finished: dict[str, Operation] = {}
        self.traces: dict[str, tuple[str, list[str]]] = {}
        self.t0 = anyio.current_time()
        self.history: dict[int, list[str]] = {}
        self.lives: dict[str, list[dict[str, Any]]] = {}
        (self.directory / "b.key").write_text(self.keys[1])
        async with SimulatorProcess({"seed": self.rng.randrange(2**31),
                                     "api_keys": [self.keys[0]]}) as a, \
                SimulatorProcess({"seed": self.rng.randrange(2**31),
                                  "api_keys": [self.keys[1]]}) as b:
            self.sims = {"a": a, "b": b}
            config = write_chaos_config(self.directory, self.sims)
            server = ServerChild(config, env=server_env({"CHAOS_SERVER_KEY_A": self.keys[0]}))
            self.server = server
            try:
                await self.wait_mcp_ready()
                self.t0 = anyio.current_time()
                stop_at = self.t0 + LOAD_S
                async with anyio.create_task_group() as group:
                    for index in range(CLIENTS):
                        group.start_soon(self.client, index, stop_at)
                    group.start_soon(self.faults_loop, 2.0, 0.5)
                await self.wait_healthy()
                mcp_pids = [int(s["pid"]) for s in server.health()["mcp_servers"].values()
                            if s.get("pid")]
            finally:
                started = time.monotonic()
                code = server.stop(signal.SIGTERM)
                stop_s = time.monotonic() - started
            (self.directory / "server.log").write_text(server.output)
            if code != 0:
                self.problems.append(f"SIGTERM: exit code {code}")
            if stop_s > 15:
                self.problems.append(f"SIGTERM: took {stop_s:.1f} s")
            survivors = [pid for pid in mcp_pids if alive(pid)]
            if survivors:
                self.problems.append(f"MCP server processes {survivors} outlived the server")
            for name, sim in self.sims.items():
                lives = [*self.lives.get(name, []), await sim.stats()]
                most = max(life["max_requests_in_window"] for life in lives)
                if most > LIMITS[name]:
                    self.problems.append(f"invariant 3: {name} got {most} requests in 60 s, "
                                         f"limit {LIMITS[name]}")
                if lives[-1]["streams"]["open"]:
                    self.problems.append(f"invariant 5: {lives[-1]['streams']['open']} upstream "
                                         f"streams still open at {name}")
            for line in server.lines:
                if any(k in line for k in self.keys):
                    self.problems.append(f"invariant 6: a key in the server output: {line[:200]}")
                    break
        for name, ops in self.books.violations().items():
            shown = [{**op, "request_id": self.traces.get(op["id"], ("?", []))[0],
                      "statuses": self.traces.get(op["id"], ("?", []))[1][-6:]} for op in ops]
            self.problems.append(f"invariant 1: {name}: {shown}")

    async def wait_mcp_ready(self, within: float = 30.0) -> None:
        assert self.server is not None
        with anyio.fail_after(within):
            while any(s.get("state") != "ready"
                      for s in self.server.health()["mcp_servers"].values()):
                await anyio.sleep(0.1)

    async def wait_healthy(self, within: float = 15.0) -> None:
        """After the faults: providers closed and running, MCP servers ready: status ``ok``."""
        assert self.server is not None
        deadline = anyio.current_time() + within
        health: dict[str, Any] = {}
        while anyio.current_time() < deadline:
            health = self.server.health()
            if health["status"] == "ok":
                return
            # Probe turns let half-open breakers see their trial calls.
            ws = await connect(self.server.ws_url)
            try:
                await self.turn(ws, random.Random(0), "plain")
            finally:
                await ws.close()
            await anyio.sleep(0.3)
        self.problems.append(f"/health did not come back to ok: {health}")


@pytest.mark.timeout(150)
async def test_server_under_chaos_ends_every_turn_exactly_once(
        chaos_seed: int, tmp_path: Path) -> None:
    baseline = descendant_pids()
    chaos = ServerChaos(chaos_seed, tmp_path)
    await chaos.run()
    outcomes = chaos.books.outcome_counts()
    print(f"seed {chaos_seed}: faults {chaos.faults}; {sum(outcomes.values())} operations: "
          f"{dict(outcomes.most_common())}")
    leaked = descendant_pids() - baseline
    assert not leaked, f"child processes left: {sorted(leaked)}"
    assert chaos.problems == [], f"seed {chaos_seed}:\n" + "\n".join(chaos.problems)
    assert outcomes["complete"] > 0
