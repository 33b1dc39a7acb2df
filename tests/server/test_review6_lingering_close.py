"""Review 6: a refused request head is answered even when the client sent more than was read.

The 431 was written and the socket closed at once. A client still sending its head (or one whose
last bytes the server had not read) then met a socket closed with unread input, which the kernel
answers with a reset: the client's ``send`` or ``recv`` failed with ``ECONNRESET`` and the 431
was lost (seen once as a flaky ``test_review5_heads.py`` under load; every time here with a head
of half a MiB). Now the server half-closes after its answer and reads and discards the rest, for
a bounded time and size, before it closes.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from server._http_protocol import MAX_HEAD_BYTES
from server._linger import LINGER_BYTES, LINGER_SECONDS
from tests.server.test_review4_request_heads import HEAD_TOO_LARGE
from tests.server_harness import ServerChild, offline_server, raw_exchange


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    with offline_server(tmp_path_factory.mktemp("linger")) as child:
        yield child


def _send_and_read(server: ServerChild, head: bytes) -> tuple[bytes, BaseException | None]:
    """Send ``head`` whole, then read to the end; what came back, and the error met if any."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(head)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        except OSError as exc:
            return b"", exc
    return received, None


@pytest.mark.parametrize("extra", [256 * 1024, 1024 * 1024])
def test_a_refused_head_is_answered_whole_though_the_client_sent_more_than_was_read(
    server: ServerChild, extra: int,
) -> None:
    head = b"GET /" + b"s" * (MAX_HEAD_BYTES + extra) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(3):
        received, error = _send_and_read(server, head)
        assert error is None, f"the 431 was lost: {error!r}"
        assert received == HEAD_TOO_LARGE


def test_a_client_that_keeps_sending_is_cut_off_within_the_linger_bounds(
    server: ServerChild,
) -> None:
    head = b"GET /" + b"s" * (MAX_HEAD_BYTES + 1024) + b" HTTP/1.1\r\n"
    sent = 0
    ended = threading.Event()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 10:  # bounded: the server must end it first
                sock.sendall(b"X-Flood: " + b"f" * 4086 + b"\r\n")
                sent += 4096
        except OSError:
            ended.set()
        elapsed = time.monotonic() - started
    assert ended.is_set(), "the server read a flooding client for 10 s"
    assert elapsed < LINGER_SECONDS + 1.5, elapsed
    # What it read after the refusal is bounded (the kernel's buffers hold the rest).
    assert sent < LINGER_BYTES + 8 * 1024 * 1024, sent
    # The server still answers others.
    assert raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
                                b"\r\n\r\n").startswith(b"HTTP/1.1 200 ")
