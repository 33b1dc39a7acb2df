"""End to end, as a hostile page or client would: a real ``serve`` process, raw sockets.

Host allowlist and Origin rule (DNS rebinding), deeply nested frames, binary frames under the
rate limit, no query strings in the access log, a ping flood from a client that never reads.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.raw_websocket import frame, handshake, read_frame
from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    http_get,
    http_json,
    receive,
    send,
    write_config,
)

TOKEN = "sec-token-3b8e61f0a4"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    directory = tmp_path_factory.mktemp("security")
    simulator = SimulatorChild(directory=directory)
    config = write_config(
        directory, simulator_url=simulator.url, mcp_servers={},
        server={"allowed_hosts": ["chat.example"], "allowed_origins": ["https://app.example"],
                "max_messages_per_minute": 5},
    )
    child = ServerChild(config, env={"MCP_BACKEND_TOKEN": TOKEN})
    yield child
    try:
        assert child.stop() == 0, child.output
        assert TOKEN not in child.output
        assert "Traceback" not in child.output, child.output
    finally:
        simulator.stop()


def _port(server: ServerChild) -> int:
    return int(server.url.rsplit(":", 1)[1])


# -- a raw WebSocket client: any Host, any Origin, frames the library would not send ----------


def _close_code(sock: socket.socket) -> int:
    """The code of the close frame the server sends first (nothing else is expected before)."""
    first, length = sock.recv(2)
    assert first == 0x88, first
    payload = b""
    while len(payload) < length:
        payload += sock.recv(length - len(payload))
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- 1. DNS rebinding ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/health", "/metrics", "/"])
def test_a_request_for_a_foreign_host_name_is_refused_on_every_route(
    server: ServerChild, route: str
) -> None:
    port = _port(server)
    status, _, body = http_get(server.url + route, headers={"Host": f"evil.example:{port}", **AUTH})
    assert (status, body) == (400, "host not allowed\n")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "chat.example", "10.1.2.3"])
def test_ip_addresses_localhost_and_configured_names_are_served(
    server: ServerChild, host: str
) -> None:
    status, _, body = http_get(server.url + "/health",
                               headers={"Host": f"{host}:{_port(server)}", **AUTH})
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_a_rebinding_page_cannot_open_a_socket(server: ServerChild) -> None:
    host = f"evil.example:{_port(server)}"
    status, sock = handshake(_port(server), token=TOKEN, host=host, origin=f"http://{host}")
    sock.close()
    assert status == 403


def test_origin_is_never_compared_with_host(server: ServerChild) -> None:
    # chat.example is an allowed Host, but a page of that origin is not an allowed Origin.
    host = f"chat.example:{_port(server)}"
    status, sock = handshake(_port(server), token=TOKEN, host=host, origin=f"http://{host}")
    with sock:
        assert status == 101
        assert _close_code(sock) == 1008
    status, sock = handshake(_port(server), token=TOKEN, host=host, origin="https://app.example")
    with sock:
        assert status == 101
        sock.sendall(frame(0x8, struct.pack("!H", 1000)))
        assert _close_code(sock) == 1000  # the server echoes our close: it had accepted us


# -- 17. deeply nested frames -------------------------------------------------------------------


async def test_a_deeply_nested_frame_is_invalid_json_and_the_socket_stays(
    server: ServerChild,
) -> None:
    nested: object = "x"
    for _ in range(200):
        nested = {"a": nested}
    frame = chat_frame("hi", request_id="deep", metadata={"m": nested})
    async with await connect(server.ws_url, token=TOKEN) as ws:
        await send(ws, "[" * 50_000)
        assert await receive(ws) == {
            "request_id": None, "status": "error",
            "chunk": {"error": "invalid JSON: nested deeper than 32 levels",
                      "error_type": "invalid_json"},
        }
        await send(ws, frame)
        assert await receive(ws) == {
            "request_id": None, "status": "error",
            "chunk": {"error": "invalid JSON: nested deeper than 32 levels",
                      "error_type": "invalid_json"},
        }
        assert (await chat(ws, "still here"))[-1]["status"] == "complete"


async def test_an_integer_over_the_digit_limit_is_invalid_json_and_the_socket_stays(
    server: ServerChild,
) -> None:
    huge = '{"action": "chat", "request_id": "r1", "n": ' + "1" * 5000 + "}"  # 5 KB, legal JSON
    invalid = {"request_id": None, "status": "error",
               "chunk": {"error": "invalid JSON: an integer longer than 4300 digits",
                         "error_type": "invalid_json"}}
    limited = {"request_id": None, "status": "error",
               "chunk": {"error": "more than 5 messages in a minute", "error_type": "rate_limited"}}
    async with await connect(server.ws_url, token=TOKEN) as ws:
        await send(ws, huge)
        assert await receive(ws) == invalid
        assert (await chat(ws, "still here"))[-1]["status"] == "complete"
        for _ in range(3):
            await send(ws, {"action": "ping"})
            assert (await receive(ws))["chunk"]["error_type"] == "unknown_action"
        await send(ws, huge)  # the sixth frame: over the rate limit, its request_id unreadable
        assert await receive(ws) == limited


# -- 21. binary frames count against the rate limit ---------------------------------------------


async def test_binary_frames_count_against_the_message_rate_limit(server: ServerChild) -> None:
    unsupported = {"request_id": None, "status": "error",
                   "chunk": {"error": "binary frames are not supported",
                             "error_type": "invalid_request"}}
    limited = {"request_id": None, "status": "error",
               "chunk": {"error": "more than 5 messages in a minute", "error_type": "rate_limited"}}
    async with await connect(server.ws_url, token=TOKEN) as ws:
        for _ in range(5):
            await ws.send(b"\x00binary")
            assert await receive(ws) == unsupported
        await ws.send(b"\x00binary")
        assert await receive(ws) == limited
        await send(ws, chat_frame("over the limit", request_id="r6"))
        assert await receive(ws) == {**limited, "request_id": "r6"}


# -- 20. no query strings in the log ------------------------------------------------------------


async def test_an_encoded_token_in_the_query_string_never_reaches_the_log(
    server: ServerChild,
) -> None:
    port = _port(server)
    status, _, _ = http_get(f"{server.url}/metrics?%74oken={TOKEN}")
    assert status == 200  # the encoded name authenticates: the app decodes it
    async with await connect(f"ws://127.0.0.1:{port}/ws/chat?%74oken={TOKEN}") as ws:
        assert (await chat(ws, "authenticated by an encoded query"))[-1]["status"] == "complete"
    deadline = time.monotonic() + 10
    while "GET /metrics?[query omitted]" not in server.output and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert "GET /metrics?[query omitted]" in server.output
    assert '"WebSocket /ws/chat?[query omitted]" [accepted]' in server.output
    assert TOKEN not in server.output


# -- 8. a ping flood from a client that never reads ---------------------------------------------


def test_a_ping_flood_from_a_client_that_never_reads_does_not_grow_the_server(
    server: ServerChild,
) -> None:
    """The server stops reading the flood once its pongs back up, and the connection works again
    when the client reads: the pongs it owes, then a whole chat turn."""
    status, sock = handshake(_port(server), token=TOKEN, host=f"127.0.0.1:{_port(server)}")
    assert status == 101
    before = _rss_kib(server.pid)
    ping = frame(0x9, b"p" * 125)
    batch = ping * 512  # 67 KB per send
    total = 40 * 2**20
    sent = 0
    pending = memoryview(batch)
    stalled_since: float | None = None
    deadline = time.monotonic() + 30
    sock.setblocking(False)
    with sock:
        while sent < total and time.monotonic() < deadline:
            try:
                written = sock.send(pending)
            except BlockingIOError:
                now = time.monotonic()
                stalled_since = stalled_since or now
                if now - stalled_since > 3.0:  # the server stopped reading us: flow control
                    break
                time.sleep(0.01)
                continue
            stalled_since = None
            sent += written
            pending = pending[written:] or memoryview(batch)  # whole frames only
        grown_mib = (_rss_kib(server.pid) - before) / 1024
        assert stalled_since is not None, f"the server read all {sent / 2**20:.1f} MiB of pings"
        sock.setblocking(True)
        sock.settimeout(20)
        request_id = "after-the-flood"
        reader = _TurnReader(sock, request_id)
        reader.start()  # the client reads again: the pongs it owes, then the turn
        sock.sendall(pending)  # the rest of the last batch: whole frames only
        sock.sendall(frame(0x1, json.dumps(chat_frame("still here?",
                                                      request_id=request_id)).encode()))
        reader.join(30)
    assert grown_mib < 16, f"server grew {grown_mib:.1f} MiB after {sent / 2**20:.1f} MiB of pings"
    assert reader.statuses[0] == "processing", reader.statuses
    assert reader.statuses[-1] == "complete", reader.statuses
    assert 0 < reader.pongs <= sent // len(ping) + 512
    assert server.health()["status"] == "ok"


class _TurnReader(threading.Thread):
    """Reads a raw socket: counts pongs, notes the statuses of ``request_id`` up to its end."""

    def __init__(self, sock: socket.socket, request_id: str) -> None:
        super().__init__(daemon=True)
        self._stream, self._request_id = sock.makefile("rb"), request_id
        self.pongs = 0
        self.statuses: list[str] = []

    def run(self) -> None:
        for _ in range(2_000_000):  # every pong owed (at most 320,000 here), then the turn
            opcode, payload = read_frame(self._stream)
            if opcode == 0xA:
                self.pongs += 1
                continue
            if opcode == 0x9:  # the server's keepalive: not answered, not needed here
                continue
            envelope = json.loads(payload)
            if envelope.get("request_id") == self._request_id:
                self.statuses.append(envelope["status"])
                if envelope["status"] in ("complete", "error"):
                    return


# -- the demo simulator's control endpoints -----------------------------------------------------


def test_the_demo_simulator_refuses_control_requests_without_the_servers_token(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, simulator_url=None, simulator="always", mcp_servers={})
    demo = ServerChild(config)
    try:
        found = re.search(r"simulator child process \d+ listening on (http://\S+)", demo.output)
        assert found is not None, demo.output
        simulator = found.group(1)
        refused = {"error": {"message": "the control endpoints need the control token",
                             "type": "invalid_request_error", "param": None,
                             "code": "invalid_control_token"}}
        for method, path, headers in (
            ("POST", "/_sim/config", {}),
            ("POST", "/_sim/config", {"Authorization": "Bearer guessed"}),
            ("POST", "/_sim/reset", {}),
            ("GET", "/_sim/stats", {}),
        ):
            body = {"faults": {"rate_500": 1.0}} if path == "/_sim/config" else None
            answer = http_json(simulator + path, method=method, body=body, headers=headers,
                               accept_error=True)
            assert answer == refused, (method, path)
        assert http_json(simulator + "/_sim/health") == {"status": "ok"}
    finally:
        assert demo.stop() == 0, demo.output
