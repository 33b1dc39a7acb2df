"""A streamable-HTTP MCP server written as raw HTTP/1.1 on 127.0.0.1, for what no SDK server sends.

``async with serve(mode, size) as server:`` runs it in the test's own event loop (a real TCP
listener) and gives its URL (``server.url``) and what it saw (``server.calls``). Every response
closes its connection. ``server/discover`` is answered "method not found" (the client falls back
to ``initialize``); ``initialize`` and ``tools/list`` (one tool ``get``, no arguments) as any
server would; a notification with 202; the GET stream with 405; ``DELETE`` with 200.
``tools/call`` answers by ``mode``:

- ``json``: a JSON body whose result's text is as many ``x`` as make the body ``size`` bytes.
- ``json-endless``: a JSON body without a length that never ends (``x`` after ``x``).
- ``sse``: an event stream of one event, whose line (``data: `` and a JSON-RPC result) has
  ``size`` bytes.
- ``sse-endless``: an event stream whose first line never ends.
- ``sse-events``: ``size`` progress notifications of 1 KB each, then the result ``ok``: a stream
  longer than any one message.
- ``gzip``: the result ``ok`` compressed with gzip though ``identity`` was asked for, followed by
  ``size`` zero bytes compressed into the same body (a decompression bomb).
- ``server-error``: a JSON-RPC error of code -32000 ``database unavailable`` (JSON body); mode
  ``server-error-sse``: the same in an event stream.
- ``notification-flood``: an event stream of ``size`` malformed notifications
  (``notifications/message`` without its ``level``, whose text holds a fake key), then ``ok``.
- ``cut``: an event stream that ends without an answer.
- ``hang``: an event stream of a comment every 0.1 s, never an answer.
- ``resume-loop``: an event stream of one event with an id and ``retry: 0``, then its end; a GET
  that resumes it (``Last-Event-ID``) is answered the same way (``server.gets`` counts them).
- ``garbage``: a JSON body that is not JSON-RPC (``token=`` and a key-shaped secret).
- ``forget``: HTTP 404 (the server no longer knows the session it gave at ``initialize``).
- ``poll``: the call's event stream ends after an event with an id (``c1``) and ``retry: 100``,
  as a server does that polls (it closes a long call's stream, the client resumes it with a GET
  naming the last event id); the first GET is answered the same way (``g1``), the second with
  the answer ``ok``. ``server.resumed_from`` lists the ``Last-Event-ID`` of each GET. Mode
  ``poll-refused``: the same stream, and every GET answered 405.
- ``json-cut``: a JSON body that ends (the connection closed) before its Content-Length.
- ``blocks``: a JSON body of ``size`` text blocks, ``0``, ``1``, ...; ``blocks-sse``: the same
  in an event stream.
- otherwise: the text ``ok``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

SECRET = "sk-live-notification0123456789"


@dataclass
class HostileHttpServer:
    mode: str
    size: int
    url: str = ""
    calls: int = 0
    gets: int = 0
    text_sent: int = 0  # characters of the last result text of modes json and sse
    open_streams: int = 0
    methods: list[str] = field(default_factory=list)
    resumed_from: list[str] = field(default_factory=list)
    last_call_id: Any = None


@asynccontextmanager
async def listening(
        handle: Callable[[anyio.abc.ByteStream], Awaitable[None]]) -> AsyncIterator[str]:
    """Serve each connection on 127.0.0.1 with ``handle`` until the block ends; its MCP URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def serve(mode: str, size: int = 0) -> AsyncIterator[HostileHttpServer]:
    server = HostileHttpServer(mode, size)
    async with listening(lambda stream: _connection(server, stream)) as server.url:
        yield server


async def _connection(server: HostileHttpServer, stream: anyio.abc.ByteStream) -> None:
    async with stream:
        try:
            method, headers, body = await _read_request(stream)
            if "last-event-id" in headers:
                server.resumed_from.append(headers["last-event-id"])
            await _answer(server, stream, method, body)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
                ConnectionError):
            return


async def _read_request(stream: anyio.abc.ByteStream) -> tuple[str, dict[str, str], bytes]:
    # What a test needs of HTTP/1.1: the method, the headers (names in lower case), and a body
    # of Content-Length bytes.
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        body += await stream.receive()
    return lines[0].split(" ")[0], headers, body


def _head(status: str, content_type: str | None, length: int | None,
          extra: tuple[str, ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close", *extra]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _json(stream: anyio.abc.ByteStream, message: dict[str, Any],
                extra: tuple[str, ...] = ()) -> None:
    body = json.dumps(message).encode()
    await stream.send(_head("200 OK", "application/json", len(body), extra) + body)


def _result(request_id: Any, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id,
            "result": {"content": [{"type": "text", "text": text}], "isError": False}}


def _frame_size(request_id: Any) -> int:
    """Bytes of a result's JSON whose text is empty."""
    return len(json.dumps(_result(request_id, "")).encode())


async def _answer(server: HostileHttpServer, stream: anyio.abc.ByteStream, method: str,
                  body: bytes) -> None:
    if method == "GET" and server.mode == "resume-loop":
        server.gets += 1
        await stream.send(_head("200 OK", "text/event-stream", None) + _PRIMING)
        return
    if method == "GET" and server.mode == "poll":
        server.gets += 1
        if server.gets == 1:
            await stream.send(_head("200 OK", "text/event-stream", None) + _POLL_AGAIN)
        else:
            answer = _event(_result(server.last_call_id, "ok"))
            await stream.send(_head("200 OK", "text/event-stream", None) + answer)
        return
    if method == "GET":
        await stream.send(_head("405 Method Not Allowed", None, 0))
        return
    if method == "DELETE":
        await stream.send(_head("200 OK", None, 0))
        return
    message = json.loads(body)
    server.methods.append(message.get("method", "?"))
    if "id" not in message:
        await stream.send(_head("202 Accepted", None, 0))
        return
    request_id = message["id"]
    match message.get("method"):
        case "initialize":
            await _json(stream, {"jsonrpc": "2.0", "id": request_id, "result": {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile-http", "version": "1"},
            }}, ("Mcp-Session-Id: session-1",))
        case "tools/list":
            await _json(stream, {"jsonrpc": "2.0", "id": request_id, "result": {"tools": [
                {"name": "get", "description": "Answer by the server's mode.",
                 "inputSchema": {"type": "object", "properties": {}}},
            ]}})
        case "tools/call":
            server.calls += 1
            await _call(server, stream, request_id)
        case _:
            await _json(stream, {"jsonrpc": "2.0", "id": request_id,
                                 "error": {"code": -32601, "message": "Method not found"}})


async def _endless(stream: anyio.abc.ByteStream, head: bytes, start: bytes) -> None:
    await stream.send(head + start)
    chunk = b"x" * 65536
    while True:
        await stream.send(chunk)


_PRIMING = b"id: e1\nretry: 0\ndata: \n\n"
_POLL = b"id: c1\nretry: 100\ndata: \n\n"
_POLL_AGAIN = b"id: g1\nretry: 100\ndata: \n\n"


def _event(message: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(message).encode() + b"\n\n"


async def _call(server: HostileHttpServer, stream: anyio.abc.ByteStream, request_id: Any) -> None:
    mode, size = server.mode, server.size
    sse = _head("200 OK", "text/event-stream", None)
    if mode == "json":
        text = "x" * (size - _frame_size(request_id))
        server.text_sent = len(text)
        await _json(stream, _result(request_id, text))
    elif mode == "json-endless":
        start = json.dumps(_result(request_id, "")).encode().partition(b'"text": "')
        await _endless(stream, _head("200 OK", "application/json", None), start[0] + start[1])
    elif mode == "sse":
        text = "x" * (size - _frame_size(request_id) - len(b"data: "))
        server.text_sent = len(text)
        await stream.send(sse + _event(_result(request_id, text)))
    elif mode == "sse-endless":
        await _endless(stream, sse, b"data: ")
    elif mode == "sse-events":
        await stream.send(sse)
        note = {"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": "nobody's", "progress": 1, "message": "p" * 1000}}
        for _ in range(size):
            await stream.send(_event(note))
        await stream.send(_event(_result(request_id, "ok")))
    elif mode == "gzip":
        packer = zlib.compressobj(wbits=31)
        body = packer.compress(json.dumps(_result(request_id, "ok")).encode())
        zeros = b"\0" * 1_048_576
        for _ in range(size // len(zeros)):
            body += packer.compress(zeros)
        body += packer.flush()
        await stream.send(_head("200 OK", "application/json", len(body),
                                ("Content-Encoding: gzip",)) + body)
    elif mode in ("server-error", "server-error-sse"):
        error = {"jsonrpc": "2.0", "id": request_id,
                 "error": {"code": -32000, "message": "database unavailable"}}
        if mode == "server-error":
            await _json(stream, error)
        else:
            await stream.send(sse + _event(error))
    elif mode == "notification-flood":
        await stream.send(sse)
        bad = {"jsonrpc": "2.0", "method": "notifications/message",
               "params": {"data": f"token={SECRET} " + "y" * 2000}}
        events = b"".join(_event(bad) for _ in range(100))
        for _ in range(size // 100):
            await stream.send(events)
        await stream.send(_event(_result(request_id, "ok")))
    elif mode == "hang":
        server.open_streams += 1
        try:
            await stream.send(sse)
            while True:
                await anyio.sleep(0.1)
                await stream.send(b": still here\n\n")
        finally:
            server.open_streams -= 1
    elif mode == "resume-loop":
        await stream.send(sse + _PRIMING)
    elif mode in ("poll", "poll-refused"):
        server.last_call_id = request_id
        await stream.send(sse + _POLL)
    elif mode == "garbage":
        body = f"token={SECRET}".encode()
        await stream.send(_head("200 OK", "application/json", len(body)) + body)
    elif mode == "forget":
        await stream.send(_head("404 Not Found", None, 0))
    elif mode == "json-cut":
        await stream.send(_head("200 OK", "application/json", 1000) + b'{"jsonrpc": "2.0"')
    elif mode in ("blocks", "blocks-sse"):
        answer = {"jsonrpc": "2.0", "id": request_id, "result": {
            "content": [{"type": "text", "text": str(n)} for n in range(size)]}}
        if mode == "blocks":
            await _json(stream, answer)
        else:
            await stream.send(sse + _event(answer))
    elif mode == "cut":
        await stream.send(sse + b": nothing more\n\n")
    else:
        await _json(stream, _result(request_id, "ok"))
