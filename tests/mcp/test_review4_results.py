"""What a hostile stdio MCP server (``tests/mcp/raw_server.py``) returns from a call."""

from __future__ import annotations

from actors.mcp import ToolResult
from actors.mcp._session import open_mcp_session
from tests.mcp.test_review3_hostile import raw_server


async def test_an_output_schema_pattern_never_blocks_the_loop() -> None:
    # The SDK checked each result against the tool's output schema with jsonschema on the event
    # loop, a ``pattern`` with ``re``: the server's own ^(a|aa)+$ against its own 38 a's and a b
    # froze every task of the process for ~8 s (each character more: 1.6 times longer), then
    # failed the call. Structured content now goes to the model as it came.
    code = "a" * 38 + "b"
    async with open_mcp_session("raw", raw_server("output-bomb", 38)) as session:
        result = await session.call_tool("get", {})
    assert result == ToolResult(text="ok", structured={"code": code}, is_error=False)
