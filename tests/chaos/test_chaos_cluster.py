"""The cluster profile: two instances of two workers sharing one Redis, under Redis faults.

Two ``mcp-backend serve --workers 2`` processes share a real redis-server and one simulator.
Concurrent WebSocket clients send turns to both instances (each in its own conversation, or a
few conversations shared by clients of both instances, so leases are contended) while faults
drawn from the seed hit Redis: frozen (SIGSTOP, longer than the operation timeout), stopped then
restarted empty, and a short freeze (slower than one round trip, shorter than the timeout).

Accounted for at the end: every turn got exactly one ``complete`` or ``error`` last, within its
deadline (the books); requests per minute and the day's money at the simulator under the
configured limits (0 overshoot); ``/health`` back to ``ok`` with Redis up and four workers;
SIGTERM exits 0 on both instances; no process left behind.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from websockets.exceptions import ConnectionClosed

from tests.redis_server import RedisServer
from tests.server_harness import ServerChild, SimulatorChild, chat_frame, connect, receive

from .accounting import Books
from .procfs import descendant_pids

RPM = 15
DAILY = 0.10  # ten answers of $0.01
REQUEST_TIMEOUT = 5.0
TURN_DEADLINE = 2 * REQUEST_TIMEOUT + 5.0  # a lease wait, the request, a fallback's margin
LOAD_S = 12.0
CLIENTS = 6
SHARED_CONVERSATIONS = 2


def _config(directory: Path, simulator_url: str, redis_url: str, history: Path) -> Path:
    """``history``: one database for both instances, so a conversation issued by one is known
    to the other (the shared conversations move between them)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "workers": 2, "shutdown_timeout": 5,
                   "max_messages_per_minute": 10_000},
        "chat": {"history_db": str(history), "max_tool_hops": 0},
        "mcpServers": {},
        "simulator": {"enabled": "never"},
        "llm": {
            "providers": {"sim": {
                "kind": "openai-compatible", "base_url": simulator_url + "/v1",
                "requires_api_key": False, "model": "sim-model", "max_tokens": 10,
                "timeout": 3, "max_retries": 0, "requests_per_minute": RPM,
                "prices": {"sim-model": {"input": 0.0, "output": 1000.0}},
                "context_windows": {"sim-model": 128_000},
            }},
            "request_timeout": REQUEST_TIMEOUT,
            "cost": {"db_path": str(directory / "ledger.sqlite3"), "daily_cost_limit": DAILY},
        },
        # Quarantine: the window lost with a Redis restarted empty pauses the provider for one
        # window, so the upstream never sees more than RPM in 60 s.
        "cluster": {"redis_url": redis_url, "key_prefix": "chaos", "connect_timeout": 0.3,
                    "op_timeout": 0.3, "lease_ttl": 3.0, "rate_quarantine_on_loss": True,
                    "journal_interval": 0.2},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class ClusterChaos:
    def __init__(self, seed: int, directory: Path, redis: RedisServer) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.directory = directory
        self.redis = redis
        self.books = Books(tolerance_s=5.0)
        self.problems: list[str] = []
        self.faults: list[str] = []
        self.urls: list[str] = []
        self.upstream: dict[str, Any] = {"total_requests": 0, "cost": 0.0}
        #: The server-issued ids of the shared conversations (``None`` until the first turn).
        self.shared: list[str | None] = [None] * SHARED_CONVERSATIONS

    async def client(self, index: int, stop_at: float) -> None:
        rng = random.Random(f"{self.seed}-cluster-{index}")
        while anyio.current_time() < stop_at:
            url = self.urls[rng.randrange(len(self.urls))]
            # 30% in a shared conversation (its id is the server's, from its first turn), the
            # others each in a new one.
            slot = rng.randrange(SHARED_CONVERSATIONS) if rng.random() < 0.3 else None
            await self.turn(url, slot, rng)
            await anyio.sleep(rng.uniform(0.05, 0.3))

    async def turn(self, url: str, slot: int | None, rng: random.Random) -> None:
        request_id = uuid.uuid4().hex
        op = self.books.begin("ws_turn", TURN_DEADLINE)
        conversation = None if slot is None else self.shared[slot]
        frame = chat_frame("chaos " + " ".join(rng.choice("abcdefgh") for _ in range(4)),
                           request_id=request_id, conversation_id=conversation)
        try:
            ws = await connect(url)
        except (OSError, TimeoutError) as exc:
            self.books.end(op, "connect_failed", detail=repr(exc))
            return
        try:
            await ws.send(json.dumps(frame))
            with anyio.move_on_after(TURN_DEADLINE + self.books.tolerance_s + 5.0):
                while True:
                    envelope = await receive(ws, TURN_DEADLINE + 10.0)
                    if envelope.get("request_id") != request_id:
                        continue
                    if envelope["status"] == "processing" and slot is not None:
                        issued = envelope["chunk"]["metadata"]["conversation_id"]
                        self.shared[slot] = self.shared[slot] or issued
                    if envelope["status"] == "complete":
                        self.books.end(op, "complete")
                        break
                    if envelope["status"] == "error":
                        self.books.end(op, f"error:{envelope['chunk'].get('error_type')}")
                        break
        except ConnectionClosed as closed:
            self.books.end(op, f"closed:{closed.rcvd.code if closed.rcvd else None}")
        finally:
            await ws.close()
        if not op.outcomes:
            self.books.end(op, "watchdog")

    async def faults_loop(self, start_s: float, spacing_s: float) -> None:
        kinds = ["freeze", "restart_empty", "slow"]
        self.rng.shuffle(kinds)
        await anyio.sleep(start_s)
        for kind in kinds:
            self.faults.append(f"{kind}@{anyio.current_time() - self.t0:.1f}")
            if kind == "freeze":
                self.redis.pause()
                await anyio.sleep(2.0)
                self.redis.resume()
            elif kind == "slow":
                self.redis.pause()
                await anyio.sleep(0.1)
                self.redis.resume()
            else:
                self.redis.stop()
                await anyio.sleep(1.0)
                self.redis.start()
            await anyio.sleep(spacing_s)

    async def run(self) -> None:
        simulator = SimulatorChild({"seed": self.seed, "models": {
            "sim-model": {"reply_words": 10, "price_in": 0.0, "price_out": 1000.0}}},
            directory=self.directory)
        servers: list[ServerChild] = []
        history = self.directory / "history.sqlite3"
        try:
            for name in ("a", "b"):
                servers.append(ServerChild(
                    _config(self.directory / name, simulator.url, self.redis.url, history),
                    wait_healthy=False))
            self.urls = [server.ws_url for server in servers]
            await self.wait_workers(servers[0], 4, 120.0)
            self.t0 = anyio.current_time()
            async with anyio.create_task_group() as group:
                for index in range(CLIENTS):
                    group.start_soon(self.client, index, self.t0 + LOAD_S)
                group.start_soon(self.faults_loop, 2.0, 2.0)
            await self.wait_workers(servers[0], 4, 20.0)
            for server in servers:
                health = server.health()
                if health.get("cluster", {}).get("redis", {}).get("ok") is not True:
                    self.problems.append(f"/health after the faults: {health}")
            stats = simulator.stats()
            if stats["max_requests_in_window"] > RPM:
                self.problems.append(f"invariant 3: {stats['max_requests_in_window']} requests "
                                     f"in 60 s, limit {RPM}")
            if round(stats["cost"] * 1e9) > round(DAILY * 1e9):
                self.problems.append(f"invariant 2: ${stats['cost']:.4f} spent, limit {DAILY}")
            self.upstream = stats
        finally:
            for server in servers:
                code = server.stop(signal.SIGTERM)
                (self.directory / f"server-{server.pid}.log").write_text(server.output)
                if code != 0:
                    self.problems.append(f"SIGTERM: exit code {code}")
            simulator.stop()
        for name, ops in self.books.violations().items():
            self.problems.append(f"invariant 1: {name}: {ops}")

    async def wait_workers(self, server: ServerChild, count: int, within: float) -> None:
        with anyio.move_on_after(within):
            while True:
                try:
                    health = await anyio.to_thread.run_sync(server.health)
                except OSError:
                    health = {}
                if health.get("cluster", {}).get("workers_up") == count:
                    return
                await anyio.sleep(0.2)
        self.problems.append(f"{count} workers did not heartbeat within {within} s")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.skipif(sys.platform != "linux", reason="SIGSTOP faults and /proc accounting")
@pytest.mark.timeout(240)
async def test_two_instances_of_two_workers_under_redis_faults_end_every_turn_exactly_once(
        chaos_seed: int, tmp_path: Path, redis_server: RedisServer) -> None:
    baseline = descendant_pids()
    chaos = ClusterChaos(chaos_seed, tmp_path, redis_server)
    await chaos.run()
    outcomes = chaos.books.outcome_counts()
    print(f"seed {chaos_seed}: faults {chaos.faults}; {sum(outcomes.values())} turns: "
          f"{dict(outcomes.most_common())}; upstream {chaos.upstream['total_requests']} "
          f"requests, ${chaos.upstream['cost']:.4f}")
    # The redis-server restarted by a fault is the fixture's, stopped after the test.
    leaked = {pid for pid in descendant_pids() - baseline
              if b"redis-server" not in _cmdline(pid)}
    assert not leaked, f"child processes left: {sorted(leaked)}"
    assert chaos.problems == [], f"seed {chaos_seed}:\n" + "\n".join(chaos.problems)
    assert outcomes["complete"] > 0
