"""Floods from a hostile stdio MCP server (``tests/mcp/raw_server.py``): notifications and
requests the SDK's dispatcher read, validated and spawned a task for, each, without bound."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest

from actors.mcp._intake import MAX_SERVER_REQUESTS
from actors.mcp._session import open_mcp_session
from tests.mcp.raw_server import SECRET
from tests.mcp.test_review3_hostile import raw_server


async def test_malformed_notifications_are_dropped_unlogged_and_the_session_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The SDK logged each at WARNING with a traceback and pydantic's report quoting it: 1,000
    # made 2.3 MB and 28,000 lines of log, the key-shaped secret in it included.
    caplog.set_level(logging.DEBUG)
    async with open_mcp_session("raw", raw_server("notification-flood", 1000)) as session:
        for _ in range(2):
            assert (await session.call_tool("get", {})).text == "ok"
    assert SECRET not in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(caplog.text) < 20_000


async def test_requests_of_a_server_that_reads_no_answer_are_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The server sends 20,000 pings and stops reading its input: each ping was a task waiting
    # to write its answer (100,000 of them: 1 GB). Past MAX_SERVER_REQUESTS unanswered, the
    # others are dropped, the first drop logged.
    async with open_mcp_session("raw", raw_server("deaf-ping-flood", 20_000)) as session:
        assert (await session.call_tool("get", {})).text == "ok"
        with anyio.fail_after(20):
            while not any("requests to answer at once" in r.getMessage() for r in caplog.records):
                await anyio.sleep(0.05)
        assert len(asyncio.all_tasks()) < 32
    assert [r.getMessage() for r in caplog.records if r.name == "actors.mcp._intake"] == [
        f"MCP server 'raw' sent more than {MAX_SERVER_REQUESTS} requests to answer at once;"
        " this session drops the others unanswered without a word"
    ]

