"""Slow clients (slowloris) against a real ``serve``: a connection that sends no request, or its
headers or body a byte now and then, is closed after ``server.request_read_timeout``; a chat
socket, whose handshake is done, may stay idle longer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.server_harness import ServerChild, SimulatorChild, chat, connect, write_config

READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorChild]:
    child = SimulatorChild(directory=tmp_path_factory.mktemp("review3-slow-sim"))
    yield child
    child.stop()


def _server(directory: Path, simulator: SimulatorChild, **server: float) -> ServerChild:
    return ServerChild(write_config(directory, simulator_url=simulator.url, mcp_servers={},
                                    server=server))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           simulator: SimulatorChild) -> Iterator[ServerChild]:
    child = _server(tmp_path_factory.mktemp("review3-slow"), simulator,
                    request_read_timeout=READ_TIMEOUT)
    yield child
    assert child.stop() == 0, child.output
    assert "Traceback" not in child.output, child.output


def _open(server: ServerChild, sent: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    if sent:
        sock.sendall(sent)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a ``content-length`` (bounded by the socket's timeout)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(4096)
    return head


def _closed_after(sock: socket.socket, started: float) -> float:
    """Seconds from ``started`` until the server closed ``sock`` (its recv sees the end)."""
    assert sock.recv(1024) == b""
    return time.monotonic() - started


def test_connections_slower_than_the_read_timeout_are_closed(server: ServerChild) -> None:
    started = time.monotonic()
    silent = _open(server)
    partial_head = _open(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    handshake = _open(server, b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    dripped_body = _open(server, b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Content-Length: 1000\r\n\r\n0123456789")
    kept_alive = _open(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    socks = [silent, partial_head, handshake, dripped_body, kept_alive]
    try:
        # Answered at once (the app reads no body), but the body still holds the connection.
        assert _read_response(dripped_body).startswith(b"HTTP/1.1 405 ")
        assert _read_response(kept_alive).startswith(b"HTTP/1.1 200 ")
        second_started = time.monotonic()
        kept_alive.sendall(b"GET /health HTTP/1.1\r\n")  # a second request, never finished
        for sock in (silent, partial_head, handshake, dripped_body):
            assert READ_TIMEOUT * 0.9 <= _closed_after(sock, started) < READ_TIMEOUT + 3
        assert READ_TIMEOUT * 0.9 <= _closed_after(kept_alive, second_started) < READ_TIMEOUT + 3
    finally:
        for sock in socks:
            sock.close()


async def test_a_chat_socket_idle_past_the_read_timeout_stays_open_and_serves(
    server: ServerChild,
) -> None:
    ws = await connect(server.ws_url)
    try:
        await anyio.sleep(READ_TIMEOUT * 2)
        envelopes = await chat(ws, "still here")
        assert [e["status"] for e in envelopes][0::len(envelopes) - 1] == ["processing", "complete"]
    finally:
        await ws.close()


def test_by_default_a_connection_that_sends_nothing_is_closed_within_ten_seconds(
    tmp_path: Path, simulator: SimulatorChild
) -> None:
    child = _server(tmp_path, simulator)
    try:
        started = time.monotonic()
        with _open(child) as sock:
            sock.settimeout(15)
            assert 9.0 <= _closed_after(sock, started) < 13.0
    finally:
        assert child.stop() == 0, child.output
