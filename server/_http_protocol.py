"""uvicorn's HTTP protocol, with a deadline for reading each request (the slowloris defence) and
a bound on the size of its head.

uvicorn times out only an idle keep-alive connection, between a response and the next request's
first byte. A connection that sends nothing, or a request's headers or body a byte now and then,
is held for ever: a client opening a few thousand of them uses up the process's file descriptors
and no one else can connect. Here a request must have arrived whole (headers, and body if any)
within ``read_timeout`` seconds of its first byte, the first request of a connection counted from
the connection; a slower connection is closed. A WebSocket's deadline ends with its handshake.

Nor does httptools bound a request's head (its line and headers): uvicorn keeps every header it
is given, and the URL grows by concatenation. One connection sending headers as fast as loopback
carries them grew the server by 200 MiB in 0.3 s, before any authentication. Here a head larger
than :data:`MAX_HEAD_BYTES` is answered 431 and the connection closed, logged as one line
(``server.http``) with the client's address and nothing of the head. The connection is closed
lingering (:mod:`server._linger`), so that the 431 reaches a client still sending its head.

And a worker holds at most ``max_open_connections`` connections (HTTP, kept alive, WebSocket):
a flood of idle sockets held one descriptor each until its read deadline, and a few thousand
used up the process's descriptors (the worker's own upstream, MCP and database connections
then failed too). Past the bound, the connection that has waited longest for its request is
closed to make room: a real client sends its request at once, so it is a flood's own socket,
and a new client is served through a flood. When no connection is waiting for its request
(all are chat sockets or requests being answered), the new one is answered 503 and closed at
once. A refusal is logged at most every :data:`_LOG_EVERY` seconds, with the count.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server._linger import Lingering

__all__ = ["MAX_HEAD_BYTES", "ReadTimeoutHttpProtocol", "http_protocol"]

MAX_HEAD_BYTES = 64 * 1024
"""The most a request's line and headers may take (h11 allows 16 KiB, nginx 32 KiB by default)."""

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
    b"\r\ncontent-length: 23\r\nconnection: close\r\n\r\nrequest head too large\n"
)


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 12\r\nretry-after: 1\r\nconnection: close\r\n\r\nserver busy\n"
)
_LOG_EVERY = 10.0
"""Seconds between two log lines about connections shed or refused (a flood is one event)."""

logger = logging.getLogger("server.http")

_UNHEARD = logging.getLogger("server.http.refused")
"""What uvicorn logs to about a connection whose head was refused: its parser error
("Invalid HTTP request received.") is ours (:class:`_HeadTooLarge`), logged as a 431."""
_UNHEARD.disabled = True


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing the request there."""


class ReadTimeoutHttpProtocol(HttpToolsProtocol):
    """``httptools`` as uvicorn runs it, closing a connection whose request is not read in time
    or whose head is over :data:`MAX_HEAD_BYTES`."""

    _refused = False

    def __init__(self, *args: Any, read_timeout: float, max_open: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._max_open = max_open
        self._read_deadline: asyncio.TimerHandle | None = None
        # A head is measured twice, each never more than it is: the URL and headers the parser
        # handed over, and the reads that fell wholly inside it (what httptools still holds of a
        # header it has not finished). Pipelined requests in one read count once each.
        self._heads = 0
        self._head_open = False
        self._handed = 0
        self._spanned = 0
        self._refused = False
        self._lingering: Lingering | None = None

    # uvicorn logs a parser error before it calls send_400_response, and a head refused in a
    # parser callback is one (httptools stops only on an exception): its logger is silenced
    # once the head is refused, and _head_too_large says what happened.
    @property
    def logger(self) -> logging.Logger:
        return _UNHEARD if self._refused else self._logger

    @logger.setter
    def logger(self, value: logging.Logger) -> None:
        self._logger = value

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's set of this server's open connections (a WebSocket's protocol takes its
        # connection's place in it), this one included.
        if len(self.connections) > self._max_open and not _WAITING.shed_oldest():
            self._busy()
            return
        self._start_reading()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # nothing more of this connection is parsed
            if self._lingering is not None:
                self._lingering.discard(data)
            return
        head = self._heads if self._head_open else None
        super().data_received(data)
        if head is not None and self._head_open and self._heads == head:
            self._spanned += len(data)
            if self._spanned > MAX_HEAD_BYTES:
                self._head_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._heads += 1
        self._head_open = True
        self._handed = self._spanned = 0
        self._start_reading()  # a later request of the connection: from its first byte

    def on_url(self, url: bytes) -> None:
        self._handed_over(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._handed_over(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._read()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a parser error 400; the error raised by _handed_over is ours.
        if self._refused:
            self._head_too_large()
        else:
            super().send_400_response(msg)

    def handle_websocket_upgrade(self) -> None:
        self._read()  # its handshake is read; the socket has its own pings and limits
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._read()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def _handed_over(self, size: int) -> None:
        self._handed += size
        if self._handed > MAX_HEAD_BYTES:
            self._refused = True
            raise _HeadTooLarge

    def _start_reading(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self._read_timeout, self._too_slow)
            _WAITING.add(self)

    def _read(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        _WAITING.discard(self)

    def _busy(self) -> None:
        """Refuse this new connection: 503, closed (its reads are ignored)."""
        self._refused = True
        self.transport.write(_BUSY)
        self.transport.close()
        _WAITING.note("refused (503) new connections", self._max_open)

    def _shed(self) -> None:
        """Close this connection, which has waited longest for its request, to make room."""
        self._read()
        self._refused = True
        if not self.transport.is_closing():
            self.transport.close()

    def _head_too_large(self) -> None:
        self._refused = True
        self._read()
        if not self.transport.is_closing():
            self.transport.write(_HEAD_TOO_LARGE)
            self._lingering = Lingering(self.transport, self.loop)
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "an unknown client"
            logger.warning("a request head over %d bytes from %s: answered 431 and the connection"
                           " closed", MAX_HEAD_BYTES, client)

    def _too_slow(self) -> None:
        # No longer waiting: it stayed among those waiting for their request, and every later
        # connection past the cap "shed" it, a no-op, and was let in.
        self._read_deadline = None
        _WAITING.discard(self)
        if not self.transport.is_closing():
            self.transport.close()


class _Waiting:
    """The process's connections waiting for a request, oldest first (a dict keeps the order
    of insertion: adding, removing and finding the oldest are O(1))."""

    def __init__(self) -> None:
        self._protocols: dict[ReadTimeoutHttpProtocol, None] = {}
        self._counts: dict[str, int] = {}
        self._logged = -_LOG_EVERY

    def add(self, protocol: ReadTimeoutHttpProtocol) -> None:
        self._protocols[protocol] = None

    def discard(self, protocol: ReadTimeoutHttpProtocol) -> None:
        self._protocols.pop(protocol, None)

    def shed_oldest(self) -> bool:
        """Close the connection waiting longest for its request; ``False`` if none waits."""
        if not self._protocols:
            return False
        oldest = next(iter(self._protocols))
        oldest._shed()
        self.note("closed connections waiting for their request", oldest._max_open)
        return True

    def note(self, what: str, bound: int) -> None:
        self._counts[what] = self._counts.get(what, 0) + 1
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            counts = ", ".join(f"{what} {count}" for what, count in self._counts.items())
            self._counts.clear()
            logger.warning("over max_open_connections (%d) for this worker: %s", bound, counts)


_WAITING = _Waiting()


def http_protocol(read_timeout: float,
                  max_open: int) -> functools.partial[ReadTimeoutHttpProtocol]:
    """What uvicorn's ``http`` setting takes: the protocol with this ``read_timeout``, holding at
    most ``max_open`` connections of the process (see the module docstring)."""
    return functools.partial(ReadTimeoutHttpProtocol, read_timeout=read_timeout,
                             max_open=max_open)
