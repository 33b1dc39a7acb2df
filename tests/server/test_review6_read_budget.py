"""Review 6: one read budget for the whole process, shared fairly by its sockets.

The per-socket read budget (server/_ws_protocol.py) bounds what one peer makes the server parse,
not what many do together: 20 sockets each at their own budget made the server parse 20 times
as much. ``server.max_read_bytes_per_second`` bounds the process; a socket beside the floods is
served next when it has something to read (start-time fair queuing), and no flood is closed for
being over the budget: it is only read later.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from server._ws_protocol import FRAME_COST, MESSAGE_COST, SLICE_BYTES
from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    connect,
    text_of,
    write_config,
)

RATE = 2 * 2**20
"""The test's ``server.max_read_bytes_per_second`` (the bucket holds one second of it)."""
HOSTILE = 20
FLOOD_SECONDS = 4.0
FRAMES = 64
"""Frames per flooding message: 63 one-byte fragments and a last one."""
COST = FRAMES * FRAME_COST + MESSAGE_COST
"""What one flooding message counts for: 32 KiB."""
WIRE = 7
"""Bytes of one masked one-byte frame on the wire."""
SLICE_COST = (SLICE_BYTES // WIRE) * FRAME_COST + (SLICE_BYTES // WIRE // FRAMES + 1) * MESSAGE_COST
"""The most one slice of the flood counts for: the budget may be overdrawn by that much."""
QUIET_WAIT = 2 * SLICE_COST / RATE + 0.2
"""0.5 s: two slices paid for, and 0.2 s for two processes on two shared cores."""


def _frame(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload)) + mask + masked


def _flood_message() -> bytes:
    text = b'{"action": "nope", "request_id": "flood"}'.ljust(FRAMES)
    return b"".join(
        _frame(0x1 if i == 0 else 0x0, text[i:i + 1], fin=i == FRAMES - 1) for i in range(FRAMES))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerChild]:
    simulator = SimulatorChild(directory=tmp_path)
    try:
        config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                              server={"max_read_bytes_per_second": RATE})
        child = ServerChild(config)
        try:
            yield child
        finally:
            assert child.stop() == 0, child.output
    finally:
        simulator.stop()


class _Flood:
    """A raw socket sending the flood as fast as the server takes it, counting the replies."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.replies = 0
        self.closed_by_server = False

    async def send(self, chunk: bytes) -> None:
        while True:
            await self.stream.send(chunk)

    async def read(self) -> None:
        buffer = b""
        while True:
            try:
                buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                self.closed_by_server = True
                return
            while len(buffer) >= 2:
                length, head = buffer[1] & 0x7F, 2
                if length == 126:
                    if len(buffer) < 4:
                        break
                    length, head = struct.unpack("!H", buffer[2:4])[0], 4
                if len(buffer) < head + length:
                    break
                opcode = buffer[0] & 0x0F
                buffer = buffer[head + length:]
                if opcode == 0x8:
                    self.closed_by_server = True
                    return
                self.replies += opcode == 0x1


async def _open_flood(port: int) -> _Flood:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    await stream.send(
        b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return _Flood(stream)


async def test_many_flooding_sockets_are_read_at_the_process_budget_and_a_quiet_one_is_served(
    server: ServerChild,
) -> None:
    chunk = _flood_message() * 32
    floods = [await _open_flood(server.port) for _ in range(HOSTILE)]
    quiet = await connect(server.ws_url, ping_interval=None)
    try:
        # A first turn builds the token encoding (a second of CPU): not what is measured here.
        assert (await chat(quiet, "warm up"))[-1]["status"] == "complete"
        async with anyio.create_task_group() as group:
            started, cpu = time.monotonic(), _cpu_seconds(server.pid)
            for flood in floods:
                group.start_soon(flood.send, chunk)
                group.start_soon(flood.read)
            await anyio.sleep(1.5)  # the bucket's burst is spent: the floods wait their turns
            sent = time.monotonic()
            with anyio.fail_after(10):
                await (await quiet.ping())
            pong_seconds = time.monotonic() - sent
            sent = time.monotonic()
            answer = await chat(quiet, "hello")
            chat_seconds = time.monotonic() - sent
            await anyio.sleep(max(0.0, FLOOD_SECONDS - (time.monotonic() - started)))
            elapsed = time.monotonic() - started
            messages = sum(flood.replies for flood in floods)
            cpu = _cpu_seconds(server.pid) - cpu
            group.cancel_scope.cancel()
        print(f"{messages * FRAMES / elapsed:.0f} frames/s read ({messages} messages in"
              f" {elapsed:.2f} s, server CPU {cpu / elapsed:.0%}); pong {pong_seconds:.3f} s,"
              f" chat {chat_seconds:.3f} s;"
              f" per flood {sorted(flood.replies for flood in floods)}")
        health = server.health()
    finally:
        await quiet.close()
        for flood in floods:
            await flood.stream.aclose()

    # Read at most the burst, the rate and one slice over; at least the rate alone.
    most = (RATE + RATE * elapsed + SLICE_COST + COST) / COST
    least = RATE * elapsed / COST
    assert least <= messages <= most, (messages, least, most)
    # In turn: every flood is read, each at least half its share of the rate (one may have had
    # the burst before the others were read).
    assert min(flood.replies for flood in floods) >= least / HOSTILE / 2
    # A quiet socket waits for at most the slice being paid for and one more, then goes first.
    assert pong_seconds < QUIET_WAIT, pong_seconds
    assert chat_seconds < QUIET_WAIT + 0.5, chat_seconds  # and its turn on the simulator
    assert answer[-1]["status"] == "complete" and text_of(answer), answer
    # Over the budget is not a fault: every flood is still open, only read later.
    assert [flood.closed_by_server for flood in floods] == [False] * HOSTILE
    assert health["connections"]["websockets"] == HOSTILE + 1
