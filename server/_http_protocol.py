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
than :data:`MAX_HEAD_BYTES` is answered 431 and the connection closed.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD_BYTES", "ReadTimeoutHttpProtocol", "http_protocol"]

MAX_HEAD_BYTES = 64 * 1024
"""The most a request's line and headers may take (h11 allows 16 KiB, nginx 32 KiB by default)."""

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
    b"\r\ncontent-length: 23\r\nconnection: close\r\n\r\nrequest head too large\n"
)


class ReadTimeoutHttpProtocol(HttpToolsProtocol):
    """``httptools`` as uvicorn runs it, closing a connection whose request is not read in time."""

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._read_deadline: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = 0
        """Bytes read of the current request's head; ``None`` once the head is complete."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_reading()

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._head_too_large()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_reading()  # a later request of the connection: from its first byte

    def on_message_complete(self) -> None:
        self._read()
        self._head_bytes = 0  # what follows is the next request's head
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._read()  # its handshake is read; the socket has its own pings and limits
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._read()
        super().connection_lost(exc)

    def _start_reading(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self._read_timeout, self._too_slow)

    def _read(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _head_too_large(self) -> None:
        # ``_head_bytes`` stays over the bound: anything read after is dropped unparsed.
        self._read()
        if not self.transport.is_closing():
            self.transport.write(_HEAD_TOO_LARGE)
            self.transport.close()

    def _too_slow(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def http_protocol(read_timeout: float) -> functools.partial[ReadTimeoutHttpProtocol]:
    """What uvicorn's ``http`` setting takes: the protocol with this ``read_timeout``."""
    return functools.partial(ReadTimeoutHttpProtocol, read_timeout=read_timeout)
