"""What a hostile streamable-HTTP MCP server (``tests/mcp/hostile_http_server.py``) returns, read
as over stdio: the bounds of :mod:`actors.mcp._intake` apply to a JSON body as to an event."""

from __future__ import annotations

import pytest

from actors.mcp import McpServerConfig, ToolResult
from actors.mcp._intake import MAX_CONTENT_BLOCKS
from actors.mcp._session import open_mcp_session
from tests.mcp.hostile_http_server import serve


@pytest.mark.parametrize("mode", ["blocks", "blocks-sse"])
async def test_a_result_of_too_many_content_blocks_over_http_is_read_to_the_bound(
    mode: str,
) -> None:
    # A JSON body's answer went to the session unscreened: its 300,000 blocks (4.6 MB, under
    # max_message_bytes) were each made a model on the event loop, as over stdio before.
    config = McpServerConfig(url="", call_timeout=10, max_message_bytes=16 * 1024 * 1024)
    async with serve(mode, 300_000) as server, open_mcp_session(
        "web", config.model_copy(update={"url": server.url})
    ) as session:
        result = await session.call_tool("get", {})
    kept = [str(n) for n in range(MAX_CONTENT_BLOCKS)]
    note = f"[{300_000 - MAX_CONTENT_BLOCKS} more content blocks, not read]"
    assert result == ToolResult(text="\n".join([*kept, note]), structured=None, is_error=False)
