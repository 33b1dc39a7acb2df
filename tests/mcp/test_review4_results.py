"""What a hostile stdio MCP server (``tests/mcp/raw_server.py``) returns: results, listings."""

from __future__ import annotations

import pytest

from actors.mcp import ToolResult
from actors.mcp._intake import MAX_CONTENT_BLOCKS
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


async def test_a_listing_that_never_ends_is_kept_to_max_message_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each page is bounded as a message, but all 100 pages were kept: 100 x max_message_bytes of
    # tools held for the session's life (and listed in /health).
    config = raw_server("endless-pages", 20_000).model_copy(update={"max_message_bytes": 65_536})
    async with open_mcp_session("raw", config) as session:
        assert [spec.name for spec in session.tools] == ["p0", "p1", "p2", "p3"]
    weight = len("p0") + 20_000 + len('{"type":"object"}')
    assert [r.getMessage() for r in caplog.records if r.name == "actors.mcp._session"] == [
        f"MCP server 'raw': tools/list stopped after 4 pages: {4 * weight} characters of tools"
        " listed (at most 65536, max_message_bytes); the rest are not offered"
    ]


async def test_a_result_of_too_many_content_blocks_is_read_to_the_bound() -> None:
    # 300,000 blocks of one character (12 MB, under max_message_bytes): the SDK made a model of
    # each on the event loop, 6 s of it frozen per call.
    # Since the seventh review a message of that many values is refused unparsed
    # (test_review7_values.py); 60,000 blocks stay under that bound and are cut here.
    async with open_mcp_session("raw", raw_server("blocks", 60_000)) as session:
        result = await session.call_tool("get", {})
    kept = [str(n) for n in range(MAX_CONTENT_BLOCKS)]
    note = f"[{60_000 - MAX_CONTENT_BLOCKS} more content blocks, not read]"
    assert result == ToolResult(text="\n".join([*kept, note]), structured=None, is_error=False)
