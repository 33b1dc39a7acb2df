"""A hostile streamable-HTTP MCP server (``tests/mcp/hostile_http_server.py``, real TCP on
127.0.0.1) against the real session, actors and catalog: sizes, errors, streams it keeps open."""

from __future__ import annotations

import inspect
import logging

import anyio
import pytest

from actors.mcp import McpServerConfig, ToolCatalog, ToolResult
from actors.mcp._errors import McpServerError, McpToolError, McpToolTimeout
from actors.mcp._http import EVENT_FRAMING_BYTES, _Transport
from actors.mcp._sdk import StreamableHTTPTransport
from actors.mcp._session import open_mcp_session
from tests.mcp.hostile_http_server import SECRET, serve
from tests.mcp.test_review3_hostile import health, mcp_system, wait_ready

LIMIT = 1024 * 1024
TOO_LONG = r"^MCP server 'web' sent a message longer than max_message_bytes \(1048576 bytes\)$"


def web(url: str, **settings: object) -> McpServerConfig:
    return McpServerConfig(url=url, call_timeout=10, max_message_bytes=LIMIT).model_copy(
        update=settings
    )


@pytest.mark.parametrize("mode", ["json", "sse"])
async def test_an_answer_over_max_message_bytes_ends_the_session(mode: str) -> None:
    # A JSON body was read whole whatever its size; an event was cut at the SDK's own 1 MiB and
    # the cut read as a dead process.
    size = LIMIT + 1 + (EVENT_FRAMING_BYTES if mode == "sse" else 0)
    async with serve(mode, size) as server, open_mcp_session("web", web(server.url)) as session:
        with pytest.raises(McpServerError, match=TOO_LONG):
            await session.call_tool("get", {})


@pytest.mark.parametrize("mode", ["json-endless", "sse-endless"])
async def test_an_answer_that_never_ends_is_cut_at_max_message_bytes(mode: str) -> None:
    # "sse-endless" is one event line that never ends; without a bound both ran to the call's
    # timeout, holding all they read.
    async with serve(mode) as server, open_mcp_session("web", web(server.url)) as session:
        with pytest.raises(McpServerError, match=TOO_LONG):
            await session.call_tool("get", {})


@pytest.mark.parametrize("mode", ["json", "sse"])
async def test_an_answer_of_max_message_bytes_is_read(mode: str) -> None:
    # Over SSE the SDK cut every event at 1 MiB, whatever max_message_bytes said (stdio: 16 MiB).
    limit = 3 * LIMIT
    size = limit + (EVENT_FRAMING_BYTES if mode == "sse" else 0)
    async with serve(mode, size) as server, open_mcp_session(
        "web", web(server.url, max_message_bytes=limit)
    ) as session:
        result = await session.call_tool("get", {})
        assert result == ToolResult(text="x" * server.text_sent, structured=None, is_error=False)


async def test_a_stream_longer_than_the_limit_in_small_events_is_read() -> None:
    # The bound is per message: 3,000 progress events of 1 KB (3 MB) before the answer.
    async with serve("sse-events", 3000) as server, open_mcp_session(
        "web", web(server.url)
    ) as session:
        assert (await session.call_tool("get", {})).text == "ok"


async def test_a_compressed_answer_is_refused_before_it_is_inflated() -> None:
    # We ask for identity; a gzip body is inflated by httpx as it is read: 100 MB of zeros took
    # 960 MB of memory, past any byte count of what arrived.
    async with serve("gzip", 8 * LIMIT) as server, open_mcp_session(
        "web", web(server.url)
    ) as session:
        with pytest.raises(McpServerError, match=(
            r"^MCP server 'web' sent a body compressed with 'gzip' when asked for 'identity'"
            r" \(its size cannot be bounded as it arrives\)$"
        )):
            await session.call_tool("get", {})


async def test_a_message_over_the_limit_restarts_the_server_as_over_stdio() -> None:
    async with serve("json", LIMIT + 1) as server, mcp_system({"web": web(server.url)}) as system:
        await wait_ready(system, "web")
        offered = await ToolCatalog(system, ["web"]).refresh()
        _, result = await offered.call("get", "{}", 10)
        assert result == ToolResult(
            text="Tool 'get' could not run: its MCP server 'web' is unavailable (sent a message"
            " longer than max_message_bytes (1048576 bytes)). Try again later or answer without"
            " it.",
            structured=None,
            is_error=True,
        )
        with anyio.fail_after(15):
            while health(system, "web").restarts != 1 or health(system, "web").state != "ready":
                await anyio.sleep(0.02)


@pytest.mark.parametrize("mode", ["server-error", "server-error-sse"])
async def test_a_server_error_of_code_32000_over_http_is_a_tool_error(mode: str) -> None:
    # Over stdio this was fixed in the third review; over HTTP the server's own -32000 still read
    # as a closed connection: the server restarted and every call in flight failed.
    async with serve(mode) as server, mcp_system({"web": web(server.url)}) as system:
        await wait_ready(system, "web")
        offered = await ToolCatalog(system, ["web"]).refresh()
        for _ in range(2):
            _, result = await offered.call("get", "{}", 5)
            assert result == ToolResult(
                text="Tool 'get' was rejected by the server: database unavailable",
                structured=None,
                is_error=True,
            )
        after = health(system, "web")
        assert (after.state, after.restarts) == ("ready", 0)
        assert system.status()["mcp:web"].restart_count == 0


async def test_a_stream_ended_without_an_answer_is_a_lost_connection() -> None:
    async with serve("cut") as server, open_mcp_session("web", web(server.url)) as session:
        with pytest.raises(McpServerError, match=(
            r"^MCP server 'web' closed the connection \(SSE stream ended without a response\)$"
        )):
            await session.call_tool("get", {})


async def test_a_call_given_up_closes_its_response_stream() -> None:
    # Under the 2025 protocol the SDK posted the cancel and kept reading the call's stream: a
    # server sending a comment now and then held one more connection and task per timed-out
    # call, for ever.
    async with serve("hang") as server, open_mcp_session("web", web(server.url)) as session:
        for _ in range(3):
            with pytest.raises(McpToolTimeout):
                await session.call_tool("get", {}, timeout=0.3)
        with anyio.fail_after(5):
            while server.open_streams:
                await anyio.sleep(0.05)
        assert server.calls == 3


async def test_a_server_that_forgot_the_session_gets_a_new_one() -> None:
    # HTTP 404 for a request carrying the session id means "start a new session" (the protocol);
    # it was a tool error, "Session terminated", on every call until our process restarted.
    async with serve("forget") as server, mcp_system({"web": web(server.url)}) as system:
        await wait_ready(system, "web")
        offered = await ToolCatalog(system, ["web"]).refresh()
        _, result = await offered.call("get", "{}", 5)
        assert result == ToolResult(
            text="Tool 'get' could not run: its MCP server 'web' is unavailable (no longer knows"
            " its session (HTTP 404 for the session id)). Try again later or answer without it.",
            structured=None,
            is_error=True,
        )
        with anyio.fail_after(15):
            while health(system, "web").restarts != 1 or health(system, "web").state != "ready":
                await anyio.sleep(0.02)
        assert server.methods.count("initialize") == 2


async def test_malformed_notifications_over_http_are_not_logged_and_the_session_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each was logged at WARNING with a traceback quoting it (a key in it included).
    caplog.set_level(logging.DEBUG)
    async with serve("notification-flood", 1000) as server, open_mcp_session(
        "web", web(server.url)
    ) as session:
        assert (await session.call_tool("get", {})).text == "ok"
    assert SECRET not in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(caplog.text) < 20_000


async def test_an_answer_that_is_not_json_rpc_is_a_tool_error_logged_once_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve("garbage") as server, open_mcp_session("web", web(server.url)) as session:
        for _ in range(2):
            with pytest.raises(McpToolError, match=(
                r"^Tool 'get' was rejected by the server: the answer is not a JSON-RPC message$"
            )):
                await session.call_tool("get", {})
    assert SECRET not in caplog.text
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith(
        ("actors", "mcp"))] == [(
            "WARNING",
            "MCP server 'web' sent an answer that is not a JSON-RPC message (36 bytes, not"
            " shown); this session's later ones are dropped without a word",
        )]


def test_every_sdk_method_the_http_transport_overrides_still_exists() -> None:
    # They are private to the SDK (mcp>=2.3,<3): a rename would silently bypass a bound, a
    # changed signature fail at run time. (That the SDK still calls each one is shown by the
    # test of its behaviour: each fails with its override removed.)
    overridden = {name for name in vars(_Transport) if name.startswith("_")
                  and not name.startswith("__")}
    assert overridden == {
        "_maybe_extract_session_id_from_response", "_handle_post_request",
        "_handle_json_response", "_handle_sse_event", "_handle_reconnection",
        "_resolve_abandoned_request", "_consume_modern_cancellation",
    }
    assert overridden <= set(vars(StreamableHTTPTransport))

    def parameters(method: object) -> list[tuple[str, str, bool]]:
        return [(p.name, p.kind.name, p.default is p.empty)
                for p in inspect.signature(method).parameters.values()]  # type: ignore[arg-type]

    for name in sorted(overridden):
        ours, theirs = getattr(_Transport, name), getattr(StreamableHTTPTransport, name)
        assert (name, parameters(ours)) == (name, parameters(theirs))
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)
    # And the private parts of it the overrides use.
    assert parameters(StreamableHTTPTransport._prepare_headers) == [
        ("self", "POSITIONAL_OR_KEYWORD", True)
    ]
    assert isinstance(StreamableHTTPTransport("http://127.0.0.1/")._in_flight_posts, dict)
