"""An MCP server over stdio written as raw JSON-RPC lines, for what the SDK's server never sends.

``python -m tests.mcp.raw_server MODE [SIZE]``. It answers ``initialize`` as any server would;
``tools/list`` lists ``get`` (no arguments) and, in mode ``bloated``, a tool ``bloated`` whose
input schema is an object whose property description has ``SIZE`` characters, in mode
``scalar`` a tool ``scalar`` whose input schema is ``type: string`` (which the protocol forbids).
In mode ``dangling-ref`` the schema of ``get`` refers to a definition it lacks; in mode
``pattern-keys`` it names its properties by ``patternProperties`` with the pattern ``BOMB``; in
mode ``unique`` its property ``a`` is an array with ``uniqueItems``; in mode ``exponential``
``a`` is a nested array whose every level is checked twice (``anyOf`` of two ``$ref`` branches).
In mode ``endless-pages`` every ``tools/list`` page lists one more tool, ``p<cursor>`` with a
description of ``SIZE`` characters, and the cursor of the next page, for ever.
In mode ``same-name`` it lists ``SIZE`` tools more, every one named ``x``; in mode
``many-schemas``, 200 tools more, ``s000`` ... ``s199``, each with an input schema of ``SIZE``
characters of JSON.
Any call answers by ``MODE``:

- ``huge``: a text result of ``SIZE`` characters (one JSON line of that size and more).
- ``punctuation``: a text result of ``SIZE`` characters, ``,{[`` repeated.
- ``line``: a text result of as many ``x`` as make its JSON line ``SIZE`` bytes long.
- ``malformed``: a result whose ``content`` is not a list (breaks the protocol's schema).
- ``error``: a JSON-RPC error whose message is ``a.`` repeated to ``SIZE`` characters.
- ``server-error``: a JSON-RPC error of code -32000 (JSON-RPC's "server error", which the SDK
  also uses for a closed connection), message ``database unavailable``.
- ``batches``: held, then answered every 0.3 s together with the others that came meanwhile,
  each with the text ``in flight: N`` (N: how many were answered together).
- ``notification-flood``: ``SIZE`` malformed notifications first (``notifications/message``
  without its ``level``, its data holding a key-shaped secret), then ``ok``.
- ``progress-flood``: ``SIZE`` well-formed progress notifications first, then ``ok``.
- ``ping-flood``: ``ok``, then ``SIZE`` ping requests; it goes on reading its input.
- ``deaf-ping-flood``: ``ok``, then ``SIZE`` ping requests, then it reads nothing more.
- ``blocks``: ``SIZE`` text blocks, ``0``, ``1``, ...
- ``output-bomb``: ``ok`` with the structured content ``{"code": "aaa...ab"}`` (``SIZE`` a's),
  which ``get``'s output schema (listed in this mode) matches with the pattern ``BOMB``.
- otherwise: the text ``ok``.

Any other method is answered with an empty result.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

_write_lock = threading.Lock()
BOMB = r"^(a|aa)+$"  # backtracks exponentially on 'aaaa...b'


def _line(request_id: Any, result: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def _answer(request_id: Any, result: dict[str, Any]) -> None:
    with _write_lock:
        sys.stdout.write(_line(request_id, result) + "\n")
        sys.stdout.flush()


def _call_result(mode: str, size: int) -> dict[str, Any]:
    if mode == "huge":
        return {"content": [{"type": "text", "text": "x" * size}], "isError": False}
    if mode == "punctuation":
        text = (",{[" * (size // 3 + 1))[:size]
        return {"content": [{"type": "text", "text": text}], "isError": False}
    if mode == "malformed":
        return {"content": "not a list", "isError": False}
    if mode == "blocks":
        return {"content": [{"type": "text", "text": str(n)} for n in range(size)]}
    if mode == "output-bomb":
        return {"content": [{"type": "text", "text": "ok"}], "isError": False,
                "structuredContent": {"code": "a" * size + "b"}}
    return {"content": [{"type": "text", "text": "ok"}], "isError": False}


def _tools(mode: str, size: int) -> list[dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {"get": {"type": "object", "properties": {}}}
    if mode == "dangling-ref":
        schemas["get"] = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    if mode == "pattern-keys":
        schemas["get"] = {"type": "object", "patternProperties": {BOMB: {"type": "integer"}}}
    if mode == "unique":
        schemas["get"] = {
            "type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}},
        }
    if mode == "exponential":
        nested = {"type": "array", "items": {"$ref": "#/$defs/nested"}}
        schemas["get"] = {
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/nested"}},
            "$defs": {"nested": {"anyOf": [{**nested, "maxItems": 0}, nested]}},
        }
    if mode == "scalar":
        schemas["scalar"] = {"type": "string"}
    if mode == "bloated":
        schemas["bloated"] = {
            "type": "object",
            "properties": {"a": {"type": "string", "description": "d" * size}},
        }
    tools = [
        {"name": name, "description": "Answer by the server's mode.", "inputSchema": schema}
        for name, schema in schemas.items()
    ]
    if mode == "output-bomb":
        tools[0]["outputSchema"] = {
            "type": "object", "properties": {"code": {"type": "string", "pattern": BOMB}},
        }
    if mode == "same-name":
        tools += [{"name": "x", "inputSchema": {"type": "object"}}] * size
    if mode == "many-schemas":
        frame = len(json.dumps(_sized_schema(""), separators=(",", ":")))
        schema = _sized_schema("d" * (size - frame))
        tools += [{"name": f"s{n:03d}", "inputSchema": schema} for n in range(200)]
    return tools


def _sized_schema(description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"a": {"type": "string", "description": description}}}


_held: list[Any] = []
_lock = threading.Lock()


def _answer_in_batches() -> None:
    while True:
        time.sleep(0.3)
        with _lock:
            batch = list(_held)
            _held.clear()
            for request_id in batch:
                _answer(request_id, {"content": [{"type": "text",
                                                  "text": f"in flight: {len(batch)}"}]})


SECRET = "sk-live-notification0123456789"


def _flood_notifications(mode: str, size: int) -> None:
    if mode == "notification-flood":
        params: dict[str, Any] = {"data": f"token={SECRET} " + "y" * 2000}
        method = "notifications/message"
    else:
        params = {"progressToken": "nobody's", "progress": 1}
        method = "notifications/progress"
    line = json.dumps({"jsonrpc": "2.0", "method": method, "params": params}) + "\n"
    with _write_lock:
        for _ in range(size):
            sys.stdout.write(line)
        sys.stdout.flush()


def _flood_pings(size: int) -> None:
    with _write_lock:
        for n in range(size):
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": f"p{n}", "method": "ping"}) + "\n")
        sys.stdout.flush()


def main() -> None:
    mode = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if mode == "batches":
        threading.Thread(target=_answer_in_batches, daemon=True).start()
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message:
            continue  # a notification
        method = message.get("method")
        if method == "initialize":
            _answer(message["id"], {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "raw", "version": "1"},
            })
        elif method == "tools/list" and mode == "endless-pages":
            cursor = int((message.get("params") or {}).get("cursor") or 0)
            _answer(message["id"], {"nextCursor": str(cursor + 1), "tools": [{
                "name": f"p{cursor}", "description": "d" * size,
                "inputSchema": {"type": "object"}}]})
        elif method == "tools/list":
            _answer(message["id"], {"tools": _tools(mode, size)})
        elif method == "tools/call" and mode == "server-error":
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": {
                "code": -32000, "message": "database unavailable"}}) + "\n")
            sys.stdout.flush()
        elif method == "tools/call" and mode == "error":
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": {
                "code": -32603, "message": "a." * (size // 2)}}) + "\n")
            sys.stdout.flush()
        elif method == "tools/call" and mode == "batches":
            with _lock:
                _held.append(message["id"])
        elif method == "tools/call" and mode in ("notification-flood", "progress-flood"):
            _flood_notifications(mode, size)
            _answer(message["id"], _call_result(mode, size))
        elif method == "tools/call" and mode in ("ping-flood", "deaf-ping-flood"):
            _answer(message["id"], _call_result(mode, size))
            _flood_pings(size)
            if mode == "deaf-ping-flood":
                time.sleep(3600)
        elif method == "tools/call" and mode == "line":
            frame = len(_line(message["id"], _call_result("huge", 0)))
            _answer(message["id"], _call_result("huge", size - frame))
        elif method == "tools/call":
            _answer(message["id"], _call_result(mode, size))
        else:
            _answer(message["id"], {})


if __name__ == "__main__":
    main()
