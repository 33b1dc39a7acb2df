"""actors.mcp._sdk against the installed ``mcp`` SDK: its client half is loaded without its server
half, the package still works whole for whoever imports it later, and the session negotiates
what ``mcp.Client`` negotiates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mcp import Client, StdioServerParameters

from actors.mcp._session import open_mcp_session
from tests.mcp.test_client import DEMO

ROOT = Path(__file__).resolve().parents[2]

_FRESH = """
import json, sys
import actors.mcp
before = sorted(m for m in ("mcp.server", "mcp.client.client", "cryptography", "sse_starlette")
                if m in sys.modules)
import mcp
import mcp.client.session
import mcp.types
from mcp import Client, ClientSession, stdio_server
from mcp.client import Transport
from actors.mcp import _sdk
print(json.dumps({
    "before": before,
    "same_session_class": ClientSession is mcp.client.session.ClientSession is _sdk.ClientSession,
    "client": Client.__module__,
    "tool": mcp.types.Tool.__name__,
    "server_loaded_after": "mcp.server" in sys.modules,
    "all": len(mcp.__all__),
}))
"""


def test_our_mcp_package_loads_no_server_half_and_mcp_still_imports_whole() -> None:
    result = subprocess.run([sys.executable, "-c", _FRESH], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == {
        "before": [],
        "same_session_class": True,
        "client": "mcp.client.client",
        "tool": "Tool",
        "server_loaded_after": True,
        "all": 70,
    }


async def test_the_session_negotiates_what_mcp_client_negotiates() -> None:
    assert DEMO.command is not None
    params = StdioServerParameters(command=DEMO.command, args=DEMO.args, cwd=DEMO.cwd)
    async with Client(params) as client:
        expected = (client.protocol_version, client.server_info)
        expected_tools = sorted(tool.name for tool in (await client.list_tools()).tools)
    async with open_mcp_session("demo", DEMO) as session:
        assert (session.protocol_version, session.server_info) == expected
        assert sorted(tool.name for tool in session.tools) == expected_tools
