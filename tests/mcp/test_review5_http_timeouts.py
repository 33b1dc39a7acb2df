"""How long the streamable-HTTP transport waits, against real servers on 127.0.0.1: a tool that
is silent for longer than the server's ``call_timeout`` (the demo server's ``sleep``, a process
of the SDK's own server, answering in JSON), and a server that never answers the POSTs
carrying our replies to its requests and our notifications (``_hold_replies``, raw HTTP/1.1 from
``tests/mcp/hostile_http_server.py``'s pieces)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import httpx2
import pytest

from actors.mcp import McpServerConfig, ToolCatalog, ToolResult
from actors.mcp._errors import McpServerError, McpToolTimeout
from actors.mcp._http import MAX_ONE_WAY_POSTS, ONE_WAY_SECONDS, HttpTransport, _Transport
from actors.mcp._sdk import StreamableHTTPTransport
from actors.mcp._session import open_mcp_session
from tests.mcp.hostile_http_server import (
    SECRET,
    HostileHttpServer,
    _answer,
    _event,
    _head,
    _read_request,
    _result,
    listening,
    serve,
)
from tests.mcp.test_client import free_port, http_server
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
    with http_server([sys.executable, "-c", code], port) as url:
        yield url


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
    async with listening(lambda stream: _connection(server, stream)) as server.url:
        yield server


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


# ---------------------------------------------------------------- whose wait each request reads


@pytest.fixture
def read_timeouts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, float]]:
    """Each request the transport sends, as it is sent: its HTTP method, what it carries (a
    JSON-RPC method, a tool's name), and the read timeout it got (``HttpTransport._time``,
    called through and watched)."""
    seen: list[tuple[str, str, float]] = []
    time_request = HttpTransport._time

    async def watched(self: HttpTransport, request: httpx2.Request) -> None:
        await time_request(self, request)
        message = json.loads(request.content) if request.content else {}
        what = str(message.get("method", "reply" if "id" in message else ""))
        if what == "tools/call":
            what += " " + message["params"]["name"]
        seen.append((request.method, what, request.extensions["timeout"]["read"]))

    monkeypatch.setattr(HttpTransport, "_time", watched)
    return seen


async def test_concurrent_calls_each_read_for_their_own_wait_and_start_up_for_call_timeout(
    read_timeouts: list[tuple[str, str, float]],
) -> None:
    # The SDK POSTs a request in a task of its own, started in the context the call sent it
    # from (its write stream carries each message's context): a call's wait goes with its
    # requests only, not to a call running beside it, nor to start-up's or the close's.
    ok = ToolResult(text="ok", structured=None, is_error=False)
    config = McpServerConfig(call_timeout=10, url="http://127.0.0.1:1/mcp")
    async with _hold_replies(0) as server, open_mcp_session(
        "web", config.model_copy(update={"url": server.url})
    ) as session:
        start_up = list(read_timeouts)

        async def short() -> None:
            with pytest.raises(McpToolTimeout):
                await session.call_tool("hang", {}, timeout=1.5)

        async with anyio.create_task_group() as tg:
            tg.start_soon(short)
            with anyio.fail_after(3):
                while len(read_timeouts) == len(start_up):
                    await anyio.sleep(0.01)
            # While the short call waits: one of its own, and one of call_timeout.
            assert await session.call_tool("get", {}, timeout=7) == ok
            assert await session.call_tool("get", {}) == ok
    assert start_up == [
        ("POST", "server/discover", 40.0),
        ("POST", "initialize", 40.0),
        ("POST", "notifications/initialized", 40.0),
        ("POST", "tools/list", 40.0),
    ]
    assert read_timeouts[len(start_up):] == [
        ("POST", "tools/call hang", 31.5),
        ("POST", "tools/call get", 37.0),
        ("POST", "tools/call get", 40.0),
        ("POST", "notifications/cancelled", 31.5),  # the short call's, as it gives up
        ("DELETE", "", 40.0),
    ]


async def test_a_resumed_call_reads_for_its_wait_and_a_restarted_session_for_call_timeout(
    read_timeouts: list[tuple[str, str, float]],
) -> None:
    async with serve("poll") as server, open_mcp_session(
        "web", McpServerConfig(url=server.url, call_timeout=10)
    ) as session:
        assert await session.call_tool("get", {}, timeout=7) == ToolResult(
            text="ok", structured=None, is_error=False)
    assert read_timeouts[4:] == [
        ("POST", "tools/call get", 37.0), ("GET", "", 37.0), ("GET", "", 37.0),
        ("DELETE", "", 40.0),
    ]
    read_timeouts.clear()
    # A session the server forgot is started again by the actor, not inside the call.
    async with serve("forget") as server, mcp_system(
        {"web": McpServerConfig(url=server.url, call_timeout=10)}
    ) as system:
        await wait_ready(system, "web")
        offered = await ToolCatalog(system, ["web"]).refresh()
        await offered.call("get", "{}", 5)
        with anyio.fail_after(15):
            while health(system, "web").restarts != 1 or health(system, "web").state != "ready":
                await anyio.sleep(0.02)
    assert read_timeouts[4:] == [
        ("POST", "tools/call get", 35.0),
        ("DELETE", "", 40.0),
        ("POST", "server/discover", 40.0),
        ("POST", "initialize", 40.0),
        ("POST", "notifications/initialized", 40.0),
        ("POST", "tools/list", 40.0),
        ("DELETE", "", 40.0),
    ]


# ---------------------------------------------------------------- one-way POSTs: tasks, secrets


def _one_way_tasks() -> int:
    return sum(task.get_name().endswith(".HttpTransport._post_one_way")
               for task in asyncio.all_tasks())


async def test_one_way_posts_run_in_sixteen_tasks_at_most_none_left_after_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = McpServerConfig(call_timeout=10, url="http://127.0.0.1:1/mcp",
                             headers={"Authorization": f"Bearer {SECRET}"})
    async with _hold_replies(MAX_ONE_WAY_POSTS + 4) as server:
        async with open_mcp_session(
            "web", config.model_copy(update={"url": server.url})
        ) as session:
            await session.call_tool("ask", {})
            with anyio.fail_after(5):
                while server.held < MAX_ONE_WAY_POSTS:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.2)
            assert (_one_way_tasks(), server.held) == (MAX_ONE_WAY_POSTS, MAX_ONE_WAY_POSTS)
        assert _one_way_tasks() == 0
    assert len([r for r in caplog.records if r.name.startswith("actors")]) == 1
    assert SECRET not in caplog.text


# ---------------------------------------------------------------- notifications/initialized


@asynccontextmanager
async def _slow_initialized(delay: float | None) -> AsyncIterator[HostileHttpServer]:
    """``hostile_http_server``'s plain mode, but the POST of ``notifications/initialized`` is
    answered after ``delay`` seconds (``None``: never)."""
    server = HostileHttpServer("ok", 0)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server.url = f"http://127.0.0.1:{port}/mcp"

    async def connection(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            try:
                method, _, body = await _read_request(stream)
                if method == "POST" and b'"notifications/initialized"' in body:
                    if delay is None:
                        await stream.receive()  # until the client gives up
                        return
                    await anyio.sleep(delay)
                await _answer(server, stream, method, body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
                    ConnectionError):
                return

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, connection)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


async def test_a_server_slow_to_accept_initialized_still_starts() -> None:
    async with _slow_initialized(4) as server:
        began = time.monotonic()
        async with open_mcp_session("web", McpServerConfig(url=server.url)) as session:
            assert 4 <= time.monotonic() - began < 5
            assert await session.call_tool("get", {}) == ToolResult(
                text="ok", structured=None, is_error=False)
    assert server.methods == ["server/discover", "initialize", "notifications/initialized",
                              "tools/list", "tools/call"]


async def test_a_server_that_never_accepts_initialized_fails_start_up_or_is_let_go() -> None:
    # Within startup_timeout: the start fails, saying so. Past ONE_WAY_SECONDS: the session
    # goes on without the server's acknowledgement (it answers the requests that follow).
    async with _slow_initialized(None) as server:
        began = time.monotonic()
        with pytest.raises(McpServerError, match=r"^MCP server 'web' did not start within 3 s$"):
            async with open_mcp_session("web", McpServerConfig(url=server.url,
                                                               startup_timeout=3)):
                pass
        assert 3 <= time.monotonic() - began < 4
        began = time.monotonic()
        async with open_mcp_session("web", McpServerConfig(url=server.url)) as session:
            assert ONE_WAY_SECONDS <= time.monotonic() - began < ONE_WAY_SECONDS + 1
            assert session.tools[0].name == "get"


def test_the_transport_s_own_public_method_shadows_none_of_the_sdk_s() -> None:
    # test_review4_http's guard compares the private methods overridden; ``post`` is ours, and
    # an SDK method of that name would be replaced without a word.
    assert {name for name in vars(_Transport) if not name.startswith("_")} == {"post"}
    assert not hasattr(StreamableHTTPTransport, "post")
