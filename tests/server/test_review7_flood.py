"""Review 7: a TCP connection flood may not hold a worker's descriptors.

Each idle connection was held until ``request_read_timeout`` closed it: a client opening
sockets faster than that used up the worker's descriptors, and no one else could connect. Now
a worker holds at most ``server.max_open_connections``; past it, the connection waiting longest
for its request is closed to make room (a flood's own idle socket, since a real client sends its
request at once), and when none is waiting a new connection is answered 503 and closed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.server_harness import ServerChild, http_get, offline_server

CAP = 16
FLOOD = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    with offline_server(tmp_path_factory.mktemp("flood"), max_open_connections=CAP,
                        max_connections=8, request_read_timeout=60) as child:
        yield child


def _sockets(pid: int) -> int:
    """The server process's open socket descriptors."""
    fds = os.listdir(f"/proc/{pid}/fd")
    count = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            pass
    return count


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        sock.recv(4096)  # a 503, or the end: closed either way
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def test_a_flood_of_idle_sockets_holds_at_most_the_cap_and_a_client_is_served(
    server: ServerChild,
) -> None:
    before = _sockets(server.pid)
    flood = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
             for _ in range(FLOOD)]
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            open_ = [s for s in flood if not _closed(s)]
            if len(open_) <= CAP:
                break
            time.sleep(0.05)
        held = _sockets(server.pid) - before
        assert len([s for s in flood if not _closed(s)]) <= CAP
        assert held <= CAP, f"the server holds {held} more sockets"
        # A real client, though the flood's sockets fill the cap: served at once.
        started = time.monotonic()
        status, _, body = http_get(server.url + "/health")
        assert status == 200, body
        assert time.monotonic() - started < 2
    finally:
        for sock in flood:
            sock.close()


def test_a_chat_socket_is_never_closed_to_make_room(server: ServerChild) -> None:
    """Only connections waiting for their request are shed; past the cap with none waiting,
    a new connection is answered 503 and closed at once."""
    with contextlib.ExitStack() as stack:
        chats = [stack.enter_context(connect(server.ws_url, open_timeout=5)) for _ in range(8)]
        extra = [stack.enter_context(socket.create_connection(("127.0.0.1", server.port),
                                                              timeout=5)) for _ in range(40)]
        time.sleep(0.5)
        for ws in chats:
            assert ws.ping().wait(2)  # every chat socket still served
        assert len([s for s in extra if not _closed(s)]) <= CAP - len(chats)


def test_sockets_closed_for_their_read_deadline_leave_no_room_taken(tmp_path: Path) -> None:
    """A connection closed by ``request_read_timeout`` stayed among those waiting for their
    request (only a request or the close of a connection still waiting took it out): the next
    flood then "shed" those dead ones, a no-op each, and held that many sockets more than the
    cap (and their protocols for the process's life)."""
    with offline_server(tmp_path, max_open_connections=CAP, max_connections=8,
                        request_read_timeout=1) as child:
        slow = [socket.create_connection(("127.0.0.1", child.port), timeout=5)
                for _ in range(CAP - 4)]
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not all(_closed(s) for s in slow):
                time.sleep(0.1)
            assert all(_closed(s) for s in slow)  # closed by their read deadline
        finally:
            for sock in slow:
                sock.close()
        flood = [socket.create_connection(("127.0.0.1", child.port), timeout=5)
                 for _ in range(3 * CAP)]
        try:
            time.sleep(0.5)  # well within the new sockets' read deadline
            assert len([s for s in flood if not _closed(s)]) <= CAP
        finally:
            for sock in flood:
                sock.close()
