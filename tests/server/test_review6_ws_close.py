"""Review 6: a WebSocket message over ``max_message_bytes`` is answered with its 1009 close.

The server wrote the close frame and closed the socket at once, with the rest of the message
unread: the kernel reset the connection, and a client that sent the message whole, then read,
met ``ECONNRESET`` instead of the close frame (a browser reports 1006, not 1009): 5 times out of 5
at 70 kB, 1 MB and 4 MB. Now the socket is closed lingering (``server._linger``).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from tests.raw_websocket import frame, handshake, read_frame
from tests.server_harness import ServerChild, offline_server

MAX_MESSAGE_BYTES = 65536  # the server's default
_TEXT, _CLOSE = 0x1, 0x8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    with offline_server(tmp_path_factory.mktemp("ws-close")) as child:
        yield child


@pytest.mark.parametrize("size", [MAX_MESSAGE_BYTES + 4096, 1024 * 1024, 4 * 1024 * 1024])
def test_a_message_over_the_bound_sent_whole_is_answered_1009_not_reset(
    server: ServerChild, size: int,
) -> None:
    for _ in range(3):
        status, sock = handshake(server.port, host=f"127.0.0.1:{server.port}", token="")
        assert status == 101
        with sock:
            try:
                sock.sendall(frame(_TEXT, b"x" * size))
                opcode, payload = read_frame(sock.makefile("rb"))
            except (ConnectionResetError, BrokenPipeError) as exc:
                pytest.fail(f"the 1009 close was lost: {exc!r}")
            assert opcode == _CLOSE
            assert struct.unpack("!H", payload[:2])[0] == 1009
            sock.sendall(frame(_CLOSE, payload[:2]))  # the closing handshake, as a client ends it
            sock.settimeout(5)
            assert sock.recv(1) == b""  # then the server closes


def test_the_server_still_serves_after_the_refusals(server: ServerChild) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
