"""Review 4: the size of a request's head (its line and headers), before any authentication.

httptools does not bound it and uvicorn keeps every header: one connection sending headers as
fast as loopback carries them grew the server by 200.6 MiB in 0.3 s (and kept reading).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from server._http_protocol import MAX_HEAD_BYTES
from tests.server_harness import ServerChild, http_get, offline_server, raw_exchange

HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain;"
                  b" charset=utf-8\r\ncontent-length: 23\r\nconnection: close\r\n\r\n"
                  b"request head too large\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    with offline_server(tmp_path_factory.mktemp("heads"), auth_token="s3cret-token") as child:
        yield child


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _padding(size: int) -> bytes:
    return b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(size // 1000 + 1))


@pytest.mark.parametrize("path", ["/health", "/ws/chat"])
def test_a_request_head_over_the_bound_is_answered_431_and_closed(
    server: ServerChild, path: str,
) -> None:
    upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") if path == "/ws/chat" else b""
    head = (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + upgrade
            + _padding(MAX_HEAD_BYTES + 4096) + b"\r\n")
    assert raw_exchange(server, head) == HEAD_TOO_LARGE


def test_a_head_within_the_bound_is_served(server: ServerChild) -> None:
    status, _, _ = http_get(server.url + "/health", headers={
        f"X-Pad-{i}": "a" * 1000 for i in range(48)})
    assert status == 200


def test_a_connection_flooding_headers_is_cut_off_without_growing_the_server(
    server: ServerChild,
) -> None:
    port = server.port
    before = _rss_mib(server.pid)
    sent = 0
    line = b"X-Pad: " + b"a" * 8000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with pytest.raises(OSError):  # the server closes: a reset, or a send that cannot go
            while sent < 256 * 2**20:
                sock.sendall(line * 128)
                sent += len(line) * 128
    assert sent < 32 * 2**20
    assert _rss_mib(server.pid) - before < 32
    assert http_get(server.url + "/health")[0] == 200


def test_pipelined_requests_in_one_read_are_each_measured_alone(server: ServerChild) -> None:
    port = server.port
    requests = 2000  # about 100 KB in one write: more than one head's bound, but 2000 heads
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * requests)
        received = b""
        for _ in range(10_000):
            if received.count(b"HTTP/1.1 404 ") == requests:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert (received.count(b"HTTP/1.1 404 "), received.count(b" 431 ")) == (requests, 0)
