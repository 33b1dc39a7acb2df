"""A raw WebSocket client for hostile tests: any Host and Origin, odd frames."""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import BinaryIO


def handshake(port: int, *, host: str, token: str, origin: str | None = None,
              path: str = "/ws/chat") -> tuple[int, socket.socket]:
    """Open a socket to 127.0.0.1 and send an upgrade request; ``(HTTP status, socket)``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             f"Authorization: Bearer {token}"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 8192:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1]), sock


def frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(
        (mask * (len(payload) // 4 + 1))[:len(payload)], "big")).to_bytes(len(payload), "big")
    if len(payload) < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    elif len(payload) < 2**16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, len(payload))
    return head + mask + masked


def read_frame(stream: BinaryIO) -> tuple[int, bytes]:
    """The next (unmasked) server frame from ``stream`` (``sock.makefile("rb")``):
    ``(opcode, payload)``."""
    first, second = _read_exactly(stream, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", _read_exactly(stream, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", _read_exactly(stream, 8))
    return first & 0x0F, _read_exactly(stream, length)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise ConnectionError(f"the server closed the socket {size - len(data)} bytes short")
    return data
