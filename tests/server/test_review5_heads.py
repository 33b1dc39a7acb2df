"""Review 5: a request head over the bound is logged as what it is.

Before, a head refused from inside the parser (its URL or headers handed over past 64 KiB) was
logged by uvicorn as ``WARNING uvicorn.error: Invalid HTTP request received.``, as if the client
had sent a malformed request, and a head refused between parser callbacks was not logged at all.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server._http_protocol import MAX_HEAD_BYTES
from tests.server.test_review4_request_heads import HEAD_TOO_LARGE
from tests.server_harness import ServerChild, offline_server, raw_exchange


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerChild]:
    with offline_server(tmp_path) as child:
        yield child


def _refusals(server: ServerChild, count: int) -> list[str]:
    """The server's log lines about refused heads, once ``count`` of them were logged (5 s)."""
    deadline = time.monotonic() + 5.0
    while True:
        # Not a bare "431": an access log line's client port may hold those digits.
        lines = [line for line in server.lines
                 if "answered 431" in line or "Invalid HTTP" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["one header", "many headers", "the url"])
def test_a_head_over_the_bound_is_logged_once_as_a_431_without_its_contents(
    server: ServerChild, where: str,
) -> None:
    if where == "one header":  # refused between parser callbacks (the reads inside it)
        head = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Secret: "
                + b"s" * (MAX_HEAD_BYTES + 4096) + b"\r\n\r\n")
    elif where == "many headers":  # refused in a parser callback
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
            b"X-Secret-%d: %s\r\n" % (i, b"s" * 1000) for i in range(70)) + b"\r\n"
    else:
        head = b"GET /" + b"s" * (MAX_HEAD_BYTES + 4096) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_exchange(server, head) == HEAD_TOO_LARGE
    lines = _refusals(server, 1)
    assert len(lines) == 1, lines
    assert re.search(rf"WARNING server\.http: a request head over {MAX_HEAD_BYTES} bytes from"
                     r" 127\.0\.0\.1:\d+: answered 431 and the connection closed$", lines[0]), lines
    assert "sss" not in server.output and "Secret" not in server.output


def _response(sock: socket.socket) -> bytes:
    """One whole response read from a keep-alive connection (its head and content-length)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    assert length is not None, head
    while len(body) < int(length.group(1)):
        chunk = sock.recv(4096)
        assert chunk, received
        body += chunk
    return head


def test_uvicorns_own_warnings_stay_for_other_connections_and_kept_alive_ones(
    server: ServerChild,
) -> None:
    # uvicorn's logger is set aside only on the connection whose head was refused: a malformed
    # request on another connection, and one after a normal request on a kept-alive connection,
    # are still answered 400 and logged by uvicorn.
    head = b"GET /" + b"s" * (MAX_HEAD_BYTES + 4096) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_exchange(server, head) == HEAD_TOO_LARGE
    assert raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    port = server.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")
    lines = _refusals(server, 3)
    assert len(lines) == 3, lines
    assert re.search(r"WARNING server\.http: a request head over \d+ bytes from 127\.0\.0\.1:\d+:"
                     r" answered 431 and the connection closed$", lines[0]), lines
    assert all(line.endswith("WARNING uvicorn.error: Invalid HTTP request received.")
               for line in lines[1:]), lines
