"""The seventh review: a server's message is bounded in JSON values before it is parsed.

Parsing builds a Python object per JSON value on the event loop, under the byte bound: a stdio
listing of 300,000 tools (16.7 MB) held the loop ~2 s, a result of 100,000 content blocks was
parsed whole before its blocks were cut. Past :data:`MAX_MESSAGE_VALUES` the session now ends
with a fault, over stdio and HTTP (a JSON body, an event), as past ``max_message_bytes``; text
full of commas and brackets inside strings is not counted and is read.
"""

from __future__ import annotations

import anyio
import pytest

from actors.mcp import McpServerConfig
from actors.mcp._errors import McpServerError
from actors.mcp._intake import MAX_MESSAGE_VALUES, too_many_values
from actors.mcp._session import open_mcp_session
from tests.loop_stall import longest_stall
from tests.mcp.hostile_http_server import serve
from tests.mcp.test_review3_hostile import raw_server
from tests.mcp.test_review6_hostile import server as listing_server

FAULT = f"a message of more than {MAX_MESSAGE_VALUES} JSON values"


async def test_a_stdio_listing_of_300000_tools_is_refused_unparsed() -> None:
    async def open_it() -> None:
        with pytest.raises(McpServerError) as failure:
            async with open_mcp_session("many", listing_server("tools", "300000")):
                pass
        assert str(failure.value) == f"MCP server 'many' wrote {FAULT}"

    with anyio.fail_after(60):
        _, stall = await longest_stall(open_it())
    # Parsing it held the loop ~2 s; the count is ~0.07 s (a loaded machine: a margin).
    assert stall < 0.6, stall


async def test_a_stdio_result_of_100000_blocks_ends_the_session() -> None:
    async with open_mcp_session("raw", raw_server("blocks", 100_000)) as session:
        with pytest.raises(McpServerError) as failure:
            await session.call_tool("get", {})
    assert str(failure.value) == f"MCP server 'raw' wrote {FAULT}"


async def test_text_of_commas_and_brackets_inside_a_string_is_read() -> None:
    # 1,000,000 characters of ",{[" inside the result's text: the raw count passes the bound,
    # the count outside strings does not.
    async with open_mcp_session("raw", raw_server("punctuation", 1_000_000)) as session:
        result = await session.call_tool("get", {})
    assert result.text == (",{[" * 333_334)[:1_000_000]


@pytest.mark.parametrize("mode", ["blocks", "blocks-sse"])
async def test_an_http_answer_of_100000_blocks_ends_the_session(mode: str) -> None:
    config = McpServerConfig(url="", call_timeout=10, max_message_bytes=16 * 1024 * 1024)
    async with serve(mode, 100_000) as server, open_mcp_session(
        "web", config.model_copy(update={"url": server.url})
    ) as session:
        with pytest.raises(McpServerError) as failure:
            await session.call_tool("get", {})
    assert str(failure.value) == f"MCP server 'web' sent {FAULT}"


@pytest.mark.parametrize(("message", "refused"), [
    # The count is commas and brackets: 262,142 + 2 is the bound, one more comma passes it.
    (b'{"a":[' + b"1," * 262_142 + b"1]}", False),
    (b'{"a":[' + b"1," * 262_143 + b"1]}", True),
    (b'{"a":"' + b",{[" * 300_000 + b'"}', False),
    (b'{"a":["' + b'\\",' * 300_000 + b'"]}', False),  # escaped quotes inside one string
    ('{"a":[' + "{}," * 300_000 + "{}]}", True),  # str, as an HTTP event's data
])
def test_the_count_of_values(message: bytes | str, refused: bool) -> None:
    assert too_many_values(message) is refused
