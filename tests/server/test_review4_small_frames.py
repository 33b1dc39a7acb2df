"""Review 4: a stream of tiny WebSocket frames, or of tiny messages.

Parsing a frame costs the same few microseconds however small it is: a client that cut its
messages into one-byte fragments (7 bytes on the wire each) made the server parse ~150,000 frames
per MiB, on the event loop every socket and request shares. Measured before the read budget:
2 MiB of such fragments cost the server 1.08 s of CPU and held ``/health`` for 1.07 s.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.raw_websocket import handshake
from tests.server_harness import ServerChild, http_get, offline_server

TOKEN = "review4-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerChild]:
    with offline_server(tmp_path, auth_token=TOKEN) as child:
        yield child


def _fragment(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload)) + mask + masked


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_flood_of_one_byte_fragments_costs_the_server_little_cpu(server: ServerChild) -> None:
    port = server.port
    status, sock = handshake(port, host="127.0.0.1", token=TOKEN)
    assert status == 101
    fragments = 60_000  # one message of 60,000 bytes: under max_message_bytes (64 KiB)
    message = b"".join([_fragment(0x1, b"x", fin=False)]
                       + [_fragment(0x0, b"x", fin=False)] * (fragments - 2)
                       + [_fragment(0x0, b"x", fin=True)])
    flood = memoryview(message * 5)  # 2.0 MiB, 300,000 frames
    before = _cpu_seconds(server.pid)
    with sock:
        sock.setblocking(False)
        while flood:  # what the socket takes now: a server that reads slowly takes less
            try:
                flood = flood[sock.send(flood):]
            except BlockingIOError:
                break
        for _ in range(20):  # the server keeps serving meanwhile
            assert http_get(server.url + "/health")[0] == 200
        spent = _cpu_seconds(server.pid) - before
    assert spent < 0.5, f"the server spent {spent:.2f} s of CPU on the fragments"


def test_a_flood_of_tiny_messages_from_a_peer_reading_its_refusals_costs_little_cpu(
    server: ServerChild,
) -> None:
    # Each message is read and refused by the app (invalid JSON, then over the rate limit):
    # ~50 us each. A peer that reads the refusals is not slowed by its writes backing up.
    port = server.port
    status, sock = handshake(port, host="127.0.0.1", token=TOKEN)
    assert status == 101
    done = threading.Event()

    def read_refusals() -> None:
        sock.settimeout(0.5)
        while not done.is_set():
            try:
                if not sock.recv(1 << 20):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=read_refusals, daemon=True)
    reader.start()
    flood = memoryview(_fragment(0x1, b"x", fin=True) * 20_000)
    before = _cpu_seconds(server.pid)
    with sock:
        sock.setblocking(False)
        while flood:
            try:
                flood = flood[sock.send(flood):]
            except BlockingIOError:
                break
        for _ in range(20):
            assert http_get(server.url + "/health")[0] == 200
        time.sleep(2.0)  # a window for the server's CPU: unbudgeted, it read all in ~1 s of it
        spent = _cpu_seconds(server.pid) - before
        done.set()
        reader.join(5)
    assert spent < 0.5, f"the server spent {spent:.2f} s of CPU on the messages"
