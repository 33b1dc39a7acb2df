"""Closing a connection the server refused, without losing its last answer.

A socket closed with input it has not read is reset by the kernel (RFC 1122 4.2.2.13), and the
reset can reach the client before it has read what was written just before the close: a client
still sending an oversized request head lost its 431, and one sending a WebSocket message over
``max_message_bytes`` its 1009 close frame (it saw a reset, 1006 in a browser). So such a
connection is closed the way nginx's ``lingering_close`` does it: the answer, then a half-close
(FIN), then what the client still sends is read and discarded until it closes, for at most
:data:`LINGER_SECONDS` and :data:`LINGER_BYTES` (nginx reads for up to 30 s; a descriptor is
held for the linger, and reading without parsing costs little).
"""

from __future__ import annotations

import asyncio

__all__ = ["LINGER_BYTES", "LINGER_SECONDS", "Lingering"]

LINGER_SECONDS = 5.0
"""How long a refused connection is read (and what it sends discarded) after its answer."""
LINGER_BYTES = 8 * 1024 * 1024
"""How much a refused connection may send after its answer before it is closed at once."""


class Lingering:
    """A refused connection's close: half-closed now, closed once the client has closed, sent
    :data:`LINGER_BYTES` more or :data:`LINGER_SECONDS` have passed. Its protocol hands every
    later read to :meth:`discard` and calls :meth:`cancel` when the connection is lost."""

    __slots__ = ("_discarded", "_timer", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._discarded = 0
        self._timer: asyncio.TimerHandle | None = None
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self._timer = loop.call_later(LINGER_SECONDS, transport.close)

    @property
    def timer(self) -> asyncio.TimerHandle | None:
        """The timer that closes the connection at the end of the linger."""
        return self._timer

    def discard(self, data: bytes) -> None:
        """Drop what the client sent after the answer; close at once past the bound."""
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES:
            self._transport.close()

    def cancel(self) -> None:
        """The connection is gone: stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
