"""A streamable-HTTP server that closes a call's response stream and expects it resumed (the
protocol's polling: an event id, a ``retry``, the end of the stream; the client reconnects with
``Last-Event-ID``), against the real session (``tests/mcp/hostile_http_server.py``)."""

from __future__ import annotations

import anyio
import pytest

from actors.mcp import McpServerConfig, ToolResult
from actors.mcp._errors import McpServerError, McpToolTimeout
from actors.mcp._http import RESUME_FLOOR_SECONDS
from actors.mcp._session import open_mcp_session
from tests.mcp.hostile_http_server import serve


def web(url: str) -> McpServerConfig:
    return McpServerConfig(url=url, call_timeout=10)


async def test_a_response_stream_the_server_closes_is_resumed_until_its_answer() -> None:
    # The SDK's ctx.close_sse_stream() does this for a long call. 13cb16e never resumed a
    # stream: the call failed as a lost connection and the server was restarted.
    async with serve("poll") as server, open_mcp_session("web", web(server.url)) as session:
        result = await session.call_tool("get", {})
    assert result == ToolResult(text="ok", structured=None, is_error=False)
    assert server.resumed_from == ["c1", "g1"]


async def test_a_stream_resumed_for_ever_is_paced_and_ends_with_its_call() -> None:
    # "retry: 0" and the same answer to every GET: the SDK resumed it thousands of times a
    # second, logged at INFO each, long after the call was over (13cb16e then never resumed a
    # stream). Resumes wait at least RESUME_FLOOR_SECONDS, and stop when the call is given up.
    async with serve("resume-loop") as server, open_mcp_session(
        "web", web(server.url)
    ) as session:
        with pytest.raises(McpToolTimeout):
            await session.call_tool("get", {}, timeout=2 * RESUME_FLOOR_SECONDS + 0.1)
        await anyio.sleep(RESUME_FLOOR_SECONDS)  # a GET sent before the call ended: counted
        gets = server.gets
        assert gets <= 2  # sent at 0.5 s and 1 s at the earliest (fewer on a loaded machine)
        await anyio.sleep(2 * RESUME_FLOOR_SECONDS)
        assert server.gets == gets


async def test_a_stream_the_server_will_not_resume_is_a_lost_connection() -> None:
    async with serve("poll-refused") as server, open_mcp_session(
        "web", web(server.url)
    ) as session:
        with pytest.raises(McpServerError, match=(
            r"^MCP server 'web' closed the connection \(the server ended its response stream"
            r" without an answer and refused to resume it \(HTTP 405\)\)$"
        )):
            await session.call_tool("get", {})
    assert server.resumed_from == ["c1"]
