"""Fixtures shared by the MCP tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.mcp.test_client import free_port, http_server


@pytest.fixture
def demo_http_url() -> Iterator[str]:
    """The demo MCP server over streamable HTTP on a free port: its URL."""
    port = free_port()
    with http_server([sys.executable, "-m", "server.demo_mcp_server", "--http", str(port)],
                     port) as url:
        yield url
