"""The hostile-client profile: a real ``serve`` process attacked over its own sockets.

``mcp-backend serve`` (a bearer token, one simulator, ``max_conversations`` 12 and 3 per socket)
faces, all at once for a few seconds: a ping flood and a binary flood from raw sockets that never
read, deeply nested JSON frames, conversation churn (new conversations on many sockets, one socket
switching between many), DNS-rebinding ``Host``/``Origin`` pairs on every route, and clients
authenticating with ``?%74oken=``, while well-behaved clients keep sending turns.

Held: every well-behaved turn completes (exact counts); the server's RSS grows less than
``RSS_BOUND_MIB``; live conversations never exceed the cap; every rebinding request is refused
(400 on HTTP routes, 403 on the socket); nested frames are ``invalid_json`` and the socket serves
on; the token never reaches the log; ``/health`` is ``ok`` afterwards and SIGTERM exits 0.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import anyio
import pytest

from tests.raw_websocket import frame, handshake
from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    http_get,
    receive,
    send,
    write_config,
)

from .procfs import rss_kib

TOKEN = "hostile-client-token-8c41f2d7a9"
FLOOD_S = 3.0
FLOOD_CAP_BYTES = 24 * 2**20
RSS_BOUND_MIB = 32
MAX_CONVERSATIONS = 12  # 8 sockets use one at once, closed ones are released a moment later
GOOD_SOCKETS, GOOD_TURNS = 3, 8
CHURN_LANES, CHURN_SOCKETS = 2, 12
SWITCHES = 12
DEEP_FRAMES = 10
REBINDING_NAMES = ("evil.example", "127.0.0.1.nip.io", "localhost.attacker.example",
                   "rebind.localhost.evil")
ROUTES = ("/", "/health", "/metrics", "/api/models")
NESTED_ERROR = {"request_id": None, "status": "error",
                "chunk": {"error": "invalid JSON: nested deeper than 32 levels",
                          "error_type": "invalid_json"}}


# -- raw sockets: any Host and Origin, frames a client library would not send ------------------


def flood(port: int, opcode: int) -> int:
    """Send frames of ``opcode`` for ``FLOOD_S`` without ever reading; the bytes sent.

    Stops early once the server has stopped reading us for a second (flow control).
    """
    status, sock = handshake(port, token=TOKEN, host=f"127.0.0.1:{port}")
    assert status == 101
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    batch = frame(opcode, b"p" * 100) * 512
    pending = memoryview(batch)
    sent = 0
    stalled_since: float | None = None
    deadline = time.monotonic() + FLOOD_S
    sock.setblocking(False)
    with sock:
        while sent < FLOOD_CAP_BYTES and time.monotonic() < deadline:
            try:
                written = sock.send(pending)
            except BlockingIOError:
                now = time.monotonic()
                stalled_since = stalled_since or now
                if now - stalled_since > 1.0:
                    break
                time.sleep(0.01)
                continue
            stalled_since = None
            sent += written
            pending = pending[written:] or memoryview(batch)  # whole frames only
    return sent


def rebinding_answers(port: int) -> dict[str, tuple[int, str]]:
    """Every rebinding name on every route, and its socket: ``{request: (status, body)}``."""
    answers: dict[str, tuple[int, str]] = {}
    for name in REBINDING_NAMES:
        for host in (f"{name}:{port}", name):
            for route in ROUTES:
                status, _, body = http_get(f"http://127.0.0.1:{port}{route}",
                                           headers={"Host": host,
                                                    "Authorization": f"Bearer {TOKEN}"})
                answers[f"{host} {route}"] = (status, body)
            status, sock = handshake(port, token=TOKEN, host=host, origin=f"http://{host}")
            sock.close()
            answers[f"{host} /ws/chat"] = (status, "")
    return answers


# -- the run -------------------------------------------------------------------------------------


class HostileClients:
    def __init__(self, server: ServerChild) -> None:
        self.server = server
        self.port = server.port
        self.good: list[str] = []
        self.churned: list[str] = []  # conversation ids, in order of creation
        self.churn_ends: list[str] = []
        self.switch_ends: list[tuple[str, str]] = []
        self.deep: list[bool] = []
        self.deep_after = ""
        self.ends: list[dict[str, object]] = []  # the last envelopes of the turns, for messages
        self.encoded: list[str] = []
        self.flooded: dict[str, int] = {}
        self.rebinding: dict[str, tuple[int, str]] = {}
        self.rss_peak_kib = 0
        self.most_conversations = 0

    async def well_behaved(self, index: int) -> None:
        async with await connect(self.server.ws_url, token=TOKEN) as ws:
            for turn in range(GOOD_TURNS):
                self.good.append((await chat(ws, f"good {index} {turn}"))[-1]["status"])

    async def churn(self, lane: int) -> None:
        for n in range(CHURN_SOCKETS):
            async with await connect(self.server.ws_url, token=TOKEN) as ws:
                envelopes = await chat(ws, f"churn {lane} {n}")
            self.churn_ends.append(envelopes[-1]["status"])
            self.ends.append(envelopes[-1])
            self.churned.append(envelopes[-1]["chunk"]["conversation_id"])

    async def switch(self) -> None:
        """One socket resuming conversations others created, one after the other."""
        async with await connect(self.server.ws_url, token=TOKEN) as ws:
            for n in range(SWITCHES):
                with anyio.fail_after(30):
                    while len(self.churned) <= n:
                        await anyio.sleep(0.05)
                conversation = self.churned[n]
                end = (await chat(ws, "switch", conversation_id=conversation))[-1]
                self.ends.append(end)
                self.switch_ends.append((end["status"], end["chunk"].get("conversation_id")))

    async def deep_frames(self) -> None:
        nested: object = "x"
        for _ in range(200):
            nested = {"a": nested}
        async with await connect(self.server.ws_url, token=TOKEN) as ws:
            for _ in range(DEEP_FRAMES):
                await send(ws, "[" * 50_000)
                self.deep.append(await receive(ws) == NESTED_ERROR)
                await send(ws, chat_frame("deep", metadata={"m": nested}))
                self.deep.append(await receive(ws) == NESTED_ERROR)
            self.deep_after = (await chat(ws, "after the nesting"))[-1]["status"]

    async def encoded_token(self) -> None:
        url = f"ws://127.0.0.1:{self.port}/ws/chat?%74oken={TOKEN}"
        for _ in range(3):
            async with await connect(url) as ws:
                end = (await chat(ws, "encoded token"))[-1]
                self.encoded.append(end["status"])
                self.ends.append(end)
        status, _, _ = await anyio.to_thread.run_sync(
            http_get, f"{self.server.url}/metrics?%74oken={TOKEN}")
        self.encoded.append(str(status))

    async def floods(self) -> None:
        async def one(kind: str, opcode: int) -> None:
            self.flooded[kind] = await anyio.to_thread.run_sync(flood, self.port, opcode)

        async with anyio.create_task_group() as group:
            group.start_soon(one, "ping", 0x9)
            group.start_soon(one, "binary", 0x2)

    async def rebind(self) -> None:
        self.rebinding = await anyio.to_thread.run_sync(rebinding_answers, self.port)

    async def watch(self, done: anyio.Event) -> None:
        for _ in range(1200):  # 0.1 s apart: two minutes at most
            if done.is_set():
                return
            self.rss_peak_kib = max(self.rss_peak_kib, rss_kib(self.server.pid))
            health = await anyio.to_thread.run_sync(self.server.health, TOKEN)
            self.most_conversations = max(self.most_conversations,
                                          health["connections"]["conversations"])
            await anyio.sleep(0.1)

    async def run(self) -> None:
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(self.watch, done)
            async with anyio.create_task_group() as load:
                for index in range(GOOD_SOCKETS):
                    load.start_soon(self.well_behaved, index)
                for lane in range(CHURN_LANES):
                    load.start_soon(self.churn, lane)
                load.start_soon(self.switch)
                load.start_soon(self.deep_frames)
                load.start_soon(self.encoded_token)
                load.start_soon(self.floods)
                load.start_soon(self.rebind)
            done.set()


@pytest.mark.timeout(240)
async def test_hostile_clients_never_grow_the_server_nor_stop_well_behaved_turns(
        tmp_path: Path) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={}, server={
        "max_messages_per_minute": 600, "max_conversations": MAX_CONVERSATIONS,
        "max_conversations_per_socket": 3})
    server = ServerChild(config, env={"MCP_BACKEND_TOKEN": TOKEN})
    try:
        async with await connect(server.ws_url, token=TOKEN) as ws:  # tokenizer loaded
            assert (await chat(ws, "warm up"))[-1]["status"] == "complete"
        rss_before = rss_kib(server.pid)
        run = HostileClients(server)
        with anyio.fail_after(180):
            await run.run()
        rss_after = rss_kib(server.pid)
        health = server.health(TOKEN)
    finally:
        code = server.stop()
        simulator.stop()
    grown_mib = (run.rss_peak_kib - rss_before) / 1024
    print(f"floods: { {k: f'{v / 2**20:.1f} MiB' for k, v in run.flooded.items()} }; RSS"
          f" {rss_before / 1024:.1f} MiB before, peak +{grown_mib:.1f} MiB, after"
          f" {(rss_after - rss_before) / 1024:+.1f} MiB; conversations at most"
          f" {run.most_conversations} of {len(run.churned) + GOOD_SOCKETS + 2} made; errors"
          f" {[e['chunk'] for e in run.ends if e['status'] == 'error']}")

    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output
    # Well-behaved clients were served throughout, every turn.
    assert run.good == ["complete"] * (GOOD_SOCKETS * GOOD_TURNS)
    # Floods: both sent, and the server stayed small.
    assert set(run.flooded) == {"ping", "binary"} and min(run.flooded.values()) > 0
    assert grown_mib < RSS_BOUND_MIB, f"server grew {grown_mib:.1f} MiB"
    # Churn: every new conversation and every switch served, the cap held.
    assert run.churn_ends == ["complete"] * (CHURN_LANES * CHURN_SOCKETS)
    assert len(set(run.churned)) == CHURN_LANES * CHURN_SOCKETS
    assert run.switch_ends == [("complete", c) for c in run.churned[:SWITCHES]]
    assert health["status"] == "ok"
    # Nested frames: each one invalid_json, the socket kept serving.
    assert (run.deep, run.deep_after) == ([True] * (2 * DEEP_FRAMES), "complete")
    # DNS rebinding: refused on every route and on the socket.
    expected = {}
    for name in REBINDING_NAMES:
        for host in (f"{name}:{run.port}", name):
            expected.update({f"{host} {route}": (400, "host not allowed\n") for route in ROUTES})
            expected[f"{host} /ws/chat"] = (403, "")
    assert run.rebinding == expected
    # ?%74oken= authenticates and never reaches the log.
    assert run.encoded == ["complete"] * 3 + ["200"], run.ends
    assert TOKEN not in server.output
    assert "?[query omitted]" in server.output
    # Last, as it is the one that fails today: two sockets that start a conversation while every
    # slot is taken can both evict the same idle one and both enter (RELIABILITY.md, found by
    # this profile).
    assert health["connections"]["conversations"] <= MAX_CONVERSATIONS
    assert 0 < run.most_conversations <= MAX_CONVERSATIONS
