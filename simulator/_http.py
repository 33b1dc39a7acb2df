"""A small HTTP/1.1 server on asyncio streams: keep-alive, chunked responses, abrupt closes.

Why not Starlette on uvicorn: without ``httptools`` uvicorn parses with ``h11`` in pure Python,
which costs several times the CPU of this parser per request, and the faults need what an ASGI
application cannot express (reset the TCP connection, close it in the middle of a chunked body,
notice that the client went away while nothing is being written). The server speaks only what
OpenAI clients send: one request at a time per connection, bodies with ``Content-Length`` or
chunked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["ClientDisconnected", "Exchange", "Handler", "Request", "serve_connection"]

_MAX_BODY = 64 * 1024 * 1024
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_LINGER_ZERO = struct.pack("ii", 1, 0)


class ClientDisconnected(Exception):
    """The client closed the connection before the response ended."""


class _Unreadable(ValueError):
    """A request whose framing we cannot read: answered with ``status``, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Request:
    """One parsed request; header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Request, "Exchange"], Awaitable[None]]


class Exchange:
    """The response side of one request on a connection."""

    __slots__ = ("_keep_alive", "_reader", "_writer", "closed")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep_alive: bool
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._keep_alive = keep_alive
        self.closed = False
        """Set when the connection must not serve another request."""

    @property
    def client_gone(self) -> bool:
        return self._reader.at_eof() or self._writer.transport.is_closing()

    @property
    def send_buffer_full(self) -> bool:
        """Whether the connection's unsent output is over the transport's high-water mark (a
        :meth:`flush` would wait)."""
        transport = self._writer.transport
        return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]

    def _write(self, data: bytes) -> None:
        """Buffer ``data``; raises :class:`ClientDisconnected` once the connection is closing
        (asyncio's transport drops such writes, uvloop's raises ``RuntimeError``)."""
        if self._writer.transport.is_closing():
            self.closed = True
            raise ClientDisconnected
        self._writer.write(data)

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Unknown')}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        lines.append("connection: keep-alive\r\n\r\n" if self._keep_alive else
                     "connection: close\r\n\r\n")
        if not self._keep_alive:
            self.closed = True
        return "".join(lines).encode("latin-1")

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write a whole response with ``Content-Length`` (buffered; never blocks); raises
        :class:`ClientDisconnected` if the client has gone."""
        headers.append(("content-length", str(len(body))))
        self._write(self._head(status, headers) + body)

    async def send_partial(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Announce ``body`` but write only its first half, then close the connection."""
        headers.append(("content-length", str(len(body))))
        self._write(self._head(status, headers) + body[: len(body) // 2])
        await self.drop()

    async def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Write the head of a chunked response."""
        headers.append(("transfer-encoding", "chunked"))
        self._write(self._head(status, headers))
        await self.flush()

    def write_chunk(self, data: bytes) -> None:
        """Buffer one chunk of a chunked body; :meth:`flush` sends it."""
        self._write(b"%x\r\n%b\r\n" % (len(data), data))

    async def flush(self) -> None:
        """Wait until the buffered output fits under the high-water mark.

        Raises :class:`ClientDisconnected` if the client has gone.
        """
        if self.client_gone:
            self.closed = True
            raise ClientDisconnected
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            self.closed = True
            raise ClientDisconnected from exc

    async def end_stream(self) -> None:
        """Write the last chunk of a chunked body."""
        self._write(b"0\r\n\r\n")
        await self.flush()

    def reset(self) -> None:
        """Close the TCP connection with a RST, discarding anything not yet sent."""
        self.closed = True
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self._writer.transport.abort()

    async def drop(self) -> None:
        """Send what is buffered, then close the connection (a body cut short)."""
        self.closed = True
        try:
            await self._writer.drain()
        except ConnectionError:
            return
        self._writer.close()

    async def wait_client_gone(self, seconds: float) -> None:
        """Return when the client closes the connection or after ``seconds``."""
        self.closed = True
        try:
            async with asyncio.timeout(seconds):
                while await self._reader.read(65536):
                    pass
        except (TimeoutError, ConnectionError):
            return


def _size(text: bytes | str, base: int, what: str) -> int:
    """A non-negative size (``Content-Length``, a chunk's) of at most ``_MAX_BODY`` bytes."""
    try:
        size = int(text, base)
    except ValueError:
        size = -1
    if size < 0:
        raise _Unreadable(400, f"invalid {what}")
    if size > _MAX_BODY:
        raise _Unreadable(413, f"request body over {_MAX_BODY} bytes")
    return size


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            size = _size((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16, "chunk size")
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise _Unreadable(413, f"request body over {_MAX_BODY} bytes")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = _size(headers.get("content-length", "0"), 10, "Content-Length")
    return await reader.readexactly(length) if length else b""


def _refuse(writer: asyncio.StreamWriter, error: _Unreadable) -> None:
    """Answer a request we could not read (the connection closes after it)."""
    body = json.dumps({"error": {"message": str(error), "type": "invalid_request_error",
                                 "param": None, "code": None}}).encode()
    writer.write(f"HTTP/1.1 {error.status} {_PHRASES[error.status]}\r\n"
                 "content-type: application/json\r\n"
                 f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)


async def serve_connection(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Serve requests on one connection until either side closes it."""
    exchange: Exchange | None = None
    try:
        while exchange is None or not exchange.closed:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            request_line = lines[0].split(" ", 2)
            if len(request_line) != 3:
                raise _Unreadable(400, "malformed request line")
            method, target, version = request_line
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await _read_body(reader, headers)
            keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            exchange = Exchange(reader, writer, keep_alive)
            await handler(Request(method, target.split("?", 1)[0], headers, body), exchange)
            if not exchange.closed:
                await exchange.flush()
    except _Unreadable as exc:
        _refuse(writer, exc)
    except (
        ClientDisconnected,
        ConnectionError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ValueError,
    ):
        return
    finally:
        if not writer.transport.is_closing():
            writer.close()
