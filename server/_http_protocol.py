"""uvicorn's HTTP protocol, with a deadline for reading each request (the slowloris defence).

uvicorn times out only an idle keep-alive connection, between a response and the next request's
first byte. A connection that sends nothing, or a request's headers or body a byte now and then,
is held for ever: a client opening a few thousand of them uses up the process's file descriptors
and no one else can connect. Here a request must have arrived whole (headers, and body if any)
within ``read_timeout`` seconds of its first byte, the first request of a connection counted from
the connection; a slower connection is closed. A WebSocket's deadline ends with its handshake.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ReadTimeoutHttpProtocol", "http_protocol"]


class ReadTimeoutHttpProtocol(HttpToolsProtocol):
    """``httptools`` as uvicorn runs it, closing a connection whose request is not read in time."""

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_reading()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_reading()  # a later request of the connection: from its first byte

    def on_message_complete(self) -> None:
        self._read()
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

    def _too_slow(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def http_protocol(read_timeout: float) -> functools.partial[ReadTimeoutHttpProtocol]:
    """What uvicorn's ``http`` setting takes: the protocol with this ``read_timeout``."""
    return functools.partial(ReadTimeoutHttpProtocol, read_timeout=read_timeout)
