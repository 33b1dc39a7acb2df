"""How long the streamable-HTTP transport waits, against real servers on 127.0.0.1: a tool that
is silent for longer than the server's ``call_timeout`` (the demo server's ``sleep``, a process
of the SDK's own server, answering in JSON), and a server that never answers the POSTs
carrying our replies to its requests and our notifications (``_hold_replies``, raw HTTP/1.1 from
``tests/mcp/hostile_http_server.py``'s pieces)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest

from actors.mcp import McpServerConfig, ToolCatalog, ToolResult
from actors.mcp._errors import McpToolTimeout
from actors.mcp._http import MAX_ONE_WAY_POSTS, ONE_WAY_SECONDS
from actors.mcp._session import open_mcp_session
from tests.mcp.hostile_http_server import (
    HostileHttpServer,
    _answer,
    _event,
    _head,
    _read_request,
    _result,
)
from tests.mcp.test_client import ROOT, free_port
from tests.mcp.test_review3_hostile import health, mcp_system, wait_ready

# ---------------------------------------------------------------- a long silent tool


@pytest.fixture
def silent_demo_url() -> Iterator[str]:
    """The demo server over streamable HTTP answering each call with a JSON body: nothing is
    sent, not even the response's headers, until the tool returns (over an event stream the
    SDK's server sends a comment every 15 s)."""
    port = free_port()
    code = ("from server.demo_mcp_server import demo_server; demo_server.run("
            f"'streamable-http', host='127.0.0.1', port={port}, json_response=True)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                if process.poll() is not None:
                    pytest.fail("the demo HTTP server exited at start-up")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_tool_silent_past_call_timeout_plus_30_s_but_within_its_timeout_completes(
    silent_demo_url: str,
) -> None:
    # The read timeout was call_timeout + 30 s whatever the call's own timeout (chat.tool_timeout
    # comes with every call from a chat): here 30.5 s, and the demo's sleep of 31 s, silent
    # while it sleeps, failed at 30.5 s as a lost connection and the server was restarted.
    config = McpServerConfig(url=silent_demo_url, call_timeout=0.5)
    async with mcp_system({"web": config}) as system:
        await wait_ready(system, "web")
        offered = await ToolCatalog(system, ["web"]).refresh()
        _, result = await offered.call("sleep", '{"seconds": 31}', 40)
        assert result == ToolResult(text="slept 31 s", structured={"result": "slept 31 s"},
                                    is_error=False)
        after = health(system, "web")
        assert (after.state, after.restarts) == ("ready", 0)
        assert system.status()["mcp:web"].restart_count == 0


# ---------------------------------------------------------------- replies the server holds


@dataclass
class _ReplyHolder:
    """Answers as ``hostile_http_server`` in its plain mode (the tool ``get``: ``ok``), but the
    tool ``ask`` sends ``pings`` ping requests on its event stream before its answer ``ok``, the
    tool ``hang`` opens an event stream and sends nothing, and a POST of a reply or of a
    ``notifications/cancelled`` is read and never answered."""

    pings: int
    url: str = ""
    plain: HostileHttpServer = field(default_factory=lambda: HostileHttpServer("ok", 0))
    held: int = 0  # POSTs held open now
    most_held: int = 0
    received: list[str] = field(default_factory=list)  # the ids of the replies POSTed to it
    cancels: int = 0  # notifications/cancelled POSTed to it


@asynccontextmanager
async def _hold_replies(pings: int) -> AsyncIterator[_ReplyHolder]:
    server = _ReplyHolder(pings)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server.url = f"http://127.0.0.1:{port}/mcp"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, lambda stream: _connection(server, stream))
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


async def _connection(server: _ReplyHolder, stream: anyio.abc.ByteStream) -> None:
    async with stream:
        try:
            method, _, body = await _read_request(stream)
            message = json.loads(body) if method == "POST" else {}
            if method == "POST" and "method" not in message:
                server.received.append(str(message.get("id")))
                await _hold(server, stream)
            elif message.get("method") == "notifications/cancelled":
                server.cancels += 1
                await _hold(server, stream)
            elif message.get("method") == "tools/call" and message["params"]["name"] == "hang":
                await stream.send(_head("200 OK", "text/event-stream", None))
                await stream.receive()
            elif (message.get("method") == "tools/call"
                  and message["params"]["name"] == "ask"):
                pings = b"".join(
                    _event({"jsonrpc": "2.0", "id": f"s{n}", "method": "ping"})
                    for n in range(server.pings)
                )
                answer = _event(_result(message["id"], "ok"))
                await stream.send(_head("200 OK", "text/event-stream", None) + pings + answer)
            else:
                await _answer(server.plain, stream, method, body)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
                ConnectionError):
            return


async def _hold(server: _ReplyHolder, stream: anyio.abc.ByteStream) -> None:
    server.held += 1
    server.most_held = max(server.most_held, server.held)
    try:
        await stream.receive()  # until the client gives up: it sends nothing more
    finally:
        server.held -= 1


async def test_replies_the_server_never_answers_are_bounded_in_time_and_count_and_calls_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The SDK posts a reply inline in its one writer loop: a server that never answered it held
    # every later message, tool calls included, for the read timeout (call_timeout + 30 s).
    pings = MAX_ONE_WAY_POSTS + 4
    config = McpServerConfig(call_timeout=10, url="http://127.0.0.1:1/mcp")
    async with _hold_replies(pings) as server, open_mcp_session(
        "web", config.model_copy(update={"url": server.url})
    ) as session:
        ok = ToolResult(text="ok", structured=None, is_error=False)
        assert await session.call_tool("ask", {}) == ok
        with anyio.fail_after(5):
            while server.held < MAX_ONE_WAY_POSTS:
                await anyio.sleep(0.02)
        held_from = time.monotonic()
        # Tool calls go on while the replies are held.
        with anyio.fail_after(3):
            assert await session.call_tool("get", {}) == ok
        await anyio.sleep(0.5)
        assert (server.held, server.most_held) == (MAX_ONE_WAY_POSTS, MAX_ONE_WAY_POSTS)
        assert sorted(server.received) == sorted(f"s{n}" for n in range(MAX_ONE_WAY_POSTS))
        # Each is given up after ONE_WAY_SECONDS; their slots are free again.
        with anyio.fail_after(ONE_WAY_SECONDS + 3):
            while server.held:
                await anyio.sleep(0.02)
        assert ONE_WAY_SECONDS - 0.5 < time.monotonic() - held_from < ONE_WAY_SECONDS + 1.5
        assert await session.call_tool("ask", {}) == ok
        with anyio.fail_after(5):
            while server.held < MAX_ONE_WAY_POSTS:
                await anyio.sleep(0.02)
        assert len(server.received) == 2 * MAX_ONE_WAY_POSTS
    # Closing the session lets go of the ones still held.
    with anyio.fail_after(3):
        while server.held:
            await anyio.sleep(0.02)
    assert server.most_held == MAX_ONE_WAY_POSTS
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name.startswith("actors")] == [(
                "WARNING",
                f"MCP server 'web' holds {MAX_ONE_WAY_POSTS} of our replies and notifications"
                " unanswered; this session drops the others while it does, without a word",
            )]


def test_the_bounds_are_seconds_and_the_server_requests_we_hold() -> None:
    assert (ONE_WAY_SECONDS, MAX_ONE_WAY_POSTS) == (5.0, 16)


async def test_cancels_the_server_never_answers_do_not_hold_the_calls_after_them() -> None:
    # A call given up sends notifications/cancelled (the 2025 protocol): held, it held the next
    # call for the read timeout (call_timeout + 30 s), which timed out in its turn.
    config = McpServerConfig(call_timeout=10, url="http://127.0.0.1:1/mcp")
    async with _hold_replies(0) as server, open_mcp_session(
        "web", config.model_copy(update={"url": server.url})
    ) as session:
        assert session.protocol_version == "2025-11-25"
        for _ in range(3):
            with pytest.raises(McpToolTimeout):
                await session.call_tool("hang", {}, timeout=0.3)
        with anyio.fail_after(3):
            ok = await session.call_tool("get", {})
        assert ok == ToolResult(text="ok", structured=None, is_error=False)
        assert (server.cancels, server.held) == (3, 3)
        with anyio.fail_after(ONE_WAY_SECONDS + 3):
            while server.held:
                await anyio.sleep(0.02)
