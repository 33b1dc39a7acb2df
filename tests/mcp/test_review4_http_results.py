"""What a hostile streamable-HTTP MCP server (``tests/mcp/hostile_http_server.py``) returns, read
as over stdio: the bounds of :mod:`actors.mcp._intake` apply to a JSON body as to an event."""

from __future__ import annotations

import logging

import pytest

from actors.mcp import McpServerConfig, ToolResult
from actors.mcp._errors import McpServerError
from actors.mcp._intake import MAX_CONTENT_BLOCKS
from actors.mcp._session import open_mcp_session
from tests.mcp.hostile_http_server import serve


@pytest.mark.parametrize("mode", ["blocks", "blocks-sse"])
async def test_a_result_of_too_many_content_blocks_over_http_is_read_to_the_bound(
    mode: str,
) -> None:
    # A JSON body's answer went to the session unscreened: its 300,000 blocks (4.6 MB, under
    # max_message_bytes) were each made a model on the event loop, as over stdio before.
    # Since the seventh review a message of that many values is refused unparsed
    # (test_review7_values.py); 60,000 blocks stay under that bound and are cut here.
    config = McpServerConfig(url="", call_timeout=10, max_message_bytes=16 * 1024 * 1024)
    async with serve(mode, 60_000) as server, open_mcp_session(
        "web", config.model_copy(update={"url": server.url})
    ) as session:
        result = await session.call_tool("get", {})
    kept = [str(n) for n in range(MAX_CONTENT_BLOCKS)]
    note = f"[{60_000 - MAX_CONTENT_BLOCKS} more content blocks, not read]"
    assert result == ToolResult(text="\n".join([*kept, note]), structured=None, is_error=False)


async def test_a_connection_cut_mid_answer_fails_that_call_as_a_lost_connection() -> None:
    config = McpServerConfig(url="", call_timeout=10)
    async with serve("json-cut") as server, open_mcp_session(
        "web", config.model_copy(update={"url": server.url})
    ) as session:
        with pytest.raises(McpServerError, match=(
            r"^MCP server 'web' closed the connection \(HTTP request failed: RemoteProtocolError"
        )):
            await session.call_tool("get", {})


async def test_the_session_id_is_not_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    # It names our session to the server: the SDK logged it at INFO (httpcore's DEBUG trace
    # shows every response header, and is not on in production).
    caplog.set_level(logging.INFO)
    config = McpServerConfig(url="", call_timeout=10)
    async with serve("ok") as server, open_mcp_session(
        "web", config.model_copy(update={"url": server.url})
    ) as session:
        assert (await session.call_tool("get", {})).text == "ok"
    assert "session-1" not in caplog.text
