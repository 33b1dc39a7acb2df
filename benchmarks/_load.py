"""The load of the stream benchmarks: K chat clients, each running streaming turns back to back.

The clients share this machine's two cores with the server they measure, so they are made as
cheap as a Python client can be: one :class:`asyncio.Protocol` per socket, no task, no timeout
scope per frame. Each speaks just enough WebSocket for the chat protocol (RFC 6455: a masked text
frame per turn, whole unmasked text frames back, pongs for the server's keepalive pings) and
decodes each envelope with msgspec. A frame's time is when its bytes arrived (one clock read per
read from the socket), so the gaps and the time to the first text are what a client sees.

``benchmarks/streams.py`` and ``benchmarks/cluster.py`` use :func:`run_clients` and
:func:`warm_up`. (Until 2026-11-30 the clients were ``websockets``' asyncio client with a timeout
scope per frame: about 50 us of CPU per frame, half a core at 100 streams, taken from the server.)
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec

__all__ = ["TURN_TIMEOUT", "Samples", "run_clients", "warm_up"]

PACE = 0.020  # the paced upstream's delta interval: client starts are staggered over one
TURN_TIMEOUT = 60.0
CONNECT_BATCH = 50

_decode = msgspec.json.Decoder().decode
_TEXT, _CLOSE, _PING, _PONG = 0x1, 0x8, 0x9, 0xA


@dataclass
class Samples:
    """What the clients of one run saw."""

    turns: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame, masked with the all-zero key (RFC 6455 5.3: any key; XOR with zero
    leaves the payload as it is, so nothing is copied)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 2**16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class _Client(asyncio.Protocol):
    """One chat socket running turns until ``deadline`` (perf_counter seconds)."""

    def __init__(self, target: str, samples: Samples) -> None:
        self._target, self._samples = target, samples
        #: No turn starts after this (``time.perf_counter()``); the first always does.
        self.deadline = float("inf")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._handshaken = False
        self._turn = 0
        self._started = 0.0
        self._last: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        host, _, path = self._target.partition("/")
        key = os.urandom(16).hex()[:22] + "=="  # 16 bytes' worth of base64 is all a key must be
        transport.write((f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"{self._target}: closed before the "
                                                      "handshake"))
        self._end("closed")

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buffer = self._buffer
        buffer += data
        if not self._handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[:end]).split(b"\r\n", 1)[0]
            del buffer[:end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(f"{self._target}: {status!r}"))
                self.close()
                return
            self._handshaken = True
            self.opened.set_result(None)
        position, size = 0, len(buffer)
        while size - position >= 2:
            opcode, length, head = buffer[position] & 0x0F, buffer[position + 1] & 0x7F, 2
            if length == 126:
                if size - position < 4:
                    break
                length, head = int.from_bytes(buffer[position + 2:position + 4], "big"), 4
            elif length == 127:
                if size - position < 10:
                    break
                length, head = int.from_bytes(buffer[position + 2:position + 10], "big"), 10
            if size - position < head + length:
                break
            payload = bytes(buffer[position + head:position + head + length])
            position += head + length
            self._frame(opcode, payload, now)
        del buffer[:position]

    def close(self) -> None:
        """Close the socket (a close frame first, when it is open)."""
        if self._transport is not None and not self._transport.is_closing():
            if self._handshaken:
                self._transport.write(_client_frame(_CLOSE, (1000).to_bytes(2, "big")))
            self._transport.close()

    # -- turns ---------------------------------------------------------------------------------

    def start(self, delay: float) -> None:
        """Run turns, the first after ``delay`` seconds."""
        self._loop.call_later(delay, self._next_turn)

    def _next_turn(self) -> None:
        if self.done.done():
            return
        if self._turn and time.perf_counter() >= self.deadline:
            self._end(None)
            return
        assert self._transport is not None
        self._turn += 1
        self._transport.write(_client_frame(_TEXT, (
            b'{"action":"chat","request_id":"t%d","payload":{"text":"hi","streaming":true,'
            b'"metadata":{}}}' % self._turn)))
        self._started, self._last = time.perf_counter(), None
        self._timer = self._loop.call_later(TURN_TIMEOUT, self._end, "timeout")

    def _frame(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == _TEXT:
            self._envelope(_decode(payload), now)
        elif opcode == _PING:
            assert self._transport is not None
            self._transport.write(_client_frame(_PONG, payload))
        elif opcode == _CLOSE:
            self._end("closed")

    def _envelope(self, envelope: dict[str, Any], now: float) -> None:
        status = envelope.get("status")
        if status == "chunk":
            if envelope["chunk"].get("type") == "text":
                if self._last is None:
                    self._samples.ttft.append(now - self._started)
                else:
                    self._samples.gaps.append(now - self._last)
                self._last = now
            return
        if status not in ("complete", "error"):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if status == "complete":
            self._samples.turns += 1
        else:
            self._samples.fail(str(envelope["chunk"].get("error_type", "error")))
        self._next_turn()

    def _end(self, failure: str | None) -> None:
        if self.done.done():
            return
        if self._timer is not None:
            self._timer.cancel()
        if failure is not None:
            self._samples.fail(failure)
        self.done.set_result(None)


async def run_clients(url: str, k: int, duration: float) -> tuple[Samples, float]:
    """``k`` clients at ``url`` (``ws://host:port/path``) running turns back to back for
    ``duration`` seconds (each runs at least one; a turn started before the end is finished):
    what they saw, and the seconds from the first start to the last end."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    target = f"{parts.hostname}:{parts.port}{parts.path}"
    samples = Samples()
    clients: list[_Client] = []
    host, port = parts.hostname, parts.port

    async def connect(client: _Client) -> None:
        await loop.create_connection(lambda: client, host, port)
        await client.opened

    try:
        for start in range(0, k, CONNECT_BATCH):
            batch = [_Client(target, samples) for _ in range(min(CONNECT_BATCH, k - start))]
            clients += batch
            await asyncio.wait_for(asyncio.gather(*(connect(c) for c in batch)), 30)
        started = time.perf_counter()
        for client in clients:
            client.deadline = started + duration
        for index, client in enumerate(clients):
            # Staggered starts, so the K streams do not tick in lockstep.
            client.start(PACE * (index % 20) / 20)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)),
                               duration + 2 * TURN_TIMEOUT)
        return samples, time.perf_counter() - started
    finally:
        for client in clients:
            client.close()


async def warm_up(url: str) -> float:
    """Two turns on one socket, alone; the seconds the second took (the target's own pace).

    Once-per-process costs (the product loads its token encoding on its first turn, ~1 s;
    ``benchmarks/memory.py`` shows that turn) are not a run's figures."""
    first, _ = await run_clients(url, 1, 0.0)  # exactly one turn each
    second, seconds = await run_clients(url, 1, 0.0)
    if first.turns != 1 or second.turns != 1 or first.failures or second.failures:
        raise RuntimeError(f"a warm-up turn at {url} failed: {first} {second}")
    return seconds
