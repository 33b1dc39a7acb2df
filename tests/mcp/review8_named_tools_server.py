"""A raw stdio MCP server (no SDK: it starts at once) listing ``N`` tools whose names have ``L``
characters: ``python -m tests.mcp.review8_named_tools_server N L``."""

from __future__ import annotations

import json
import sys
from typing import Any


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    count, length = int(sys.argv[1]), int(sys.argv[2])
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message:
            continue  # a notification
        if message.get("method") == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}}, "serverInfo": {"name": "names", "version": "1"}}
        elif message.get("method") == "tools/list":
            result = {"tools": [{"name": f"t{i:05d}" + "n" * (length - 6), "description": "d",
                                 "inputSchema": {"type": "object"}} for i in range(count)]}
        else:
            result = {}
        _send({"jsonrpc": "2.0", "id": message["id"], "result": result})


if __name__ == "__main__":
    main()
