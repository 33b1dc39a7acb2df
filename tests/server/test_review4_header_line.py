"""Review 4: one header line that never ends is cut off at the head's bound.

httptools hands a header over only once its line has ended, and keeps what it has of it until
then: a line that never ends is measured by the reads that fell wholly inside the head
(server/_http_protocol.py). The other head tests all end their lines.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_harness import ServerChild, http_get, offline_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerChild]:
    with offline_server(tmp_path) as child:
        yield child


def test_a_header_line_that_never_ends_is_cut_off(server: ServerChild) -> None:
    port = server.port
    sent = 0
    piece = b"a" * 16384
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        with pytest.raises(OSError):  # the server closes: a reset, or a send that cannot go
            while sent < 256 * 2**20:
                sock.sendall(piece)
                sent += len(piece)
    # What loopback's buffers hold besides the bound; unbounded, all 256 MiB were taken.
    assert sent < 32 * 2**20
    assert http_get(server.url + "/health")[0] == 200
