"""uvicorn's sans-I/O WebSocket protocol, with flow control for what the server writes unasked.

websockets' sans-I/O protocol answers a ping with a pong the moment it parses it, and uvicorn's
``websockets-sansio`` writes that pong to the transport without looking at its buffer: a client
that floods pings and never reads would make the server buffer every pong in memory. Here, once
the transport's write buffer passes its high-water mark (asyncio calls :meth:`pause_writing`),
the peer is not read until the buffer drains (:meth:`resume_writing`): a peer that does not read
is not read, whatever it sends, so what one read can bring in (a few hundred KiB of pings) bounds
what its answers can buffer. The app's own sends already wait for the buffer to drain.

Chosen over uvicorn's legacy ``websockets`` implementation (which stops reading a ping flood the
same way) by measurement: the floor relay of ``benchmarks/streams.py`` costs 3-10% less CPU per
delta on it (README, "Streams per process").

A peer is also read only as fast as its budget allows (:data:`READ_BURST` bytes, then
:data:`READ_PER_SECOND`), each frame counted as at least :data:`FRAME_COST` bytes and each whole
message :data:`MESSAGE_COST` more: parsing a frame costs the same few microseconds however small
it is, and the app's reading of a message tens, so streams of tiny frames or messages took the
whole loop (2 MiB of one-byte fragments: 1.08 s of CPU, ``/health`` held 1 s; 20,000 one-byte
text messages from a peer reading its refusals: 0.98 s). What is read beyond the budget waits,
unparsed, with the socket not read, until the budget has refilled. A chat client never comes
near it (120 messages of at most 64 KiB a minute, and pongs).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent

__all__ = ["FRAME_COST", "MESSAGE_COST", "READ_BURST", "READ_PER_SECOND", "WS_PROTOCOL",
           "FlowControlledWebSocket"]

READ_BURST: Final = 4 * 2**20
"""Bytes a peer may send at once."""
READ_PER_SECOND: Final = 2**20
"""Bytes a peer may send per second after its burst."""
FRAME_COST: Final = 256
"""What a frame counts for at least: at most 4096 frames a second are parsed for one peer."""
MESSAGE_COST: Final = 16 * 1024
"""What a whole message counts for besides its frames: the app reads and answers each one
(~50 us for a one-byte text, refused or not), so at most 64 a second reach it from one peer."""
_DATA: Final = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})
_SLICE: Final = 4096
"""Bytes parsed between two looks at the budget (at most ~680 frames of 6 bytes)."""

#: What uvicorn's ``ws`` setting names: this module's protocol, by import path (uvicorn imports it
#: when the server starts, in each worker).
WS_PROTOCOL = f"{__name__}:FlowControlledWebSocket"


class FlowControlledWebSocket(WebSocketsSansIOProtocol):
    """``websockets-sansio`` that stops reading a peer while its writes are backed up, or while
    it is over its read budget (module docstring)."""

    _writes_backed_up = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._budget = float(READ_BURST)
        self._counted_at = self.loop.time()
        self._unparsed = b""
        """Read while over the budget: parsed once the budget has refilled."""
        self._refill: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        data = self._unparsed + data if self._unparsed else data
        self._unparsed = b""
        # By offset: cutting the rest off after each slice copied it (a 256 KiB read, ~8 MiB).
        for start in range(0, len(data), _SLICE):
            if self._over_budget():
                self._unparsed = data[start:]
                self.transport.pause_reading()
                wait = -self._budget / READ_PER_SECOND
                self._refill = self.loop.call_later(wait, self._refilled)
                return
            super().data_received(data[start:start + _SLICE] if len(data) > _SLICE else data)
            if self.transport.is_closing():
                return

    def handle_events(self) -> None:
        self._budget -= sum(
            max(FRAME_COST, len(event.data))
            + (MESSAGE_COST if event.fin and event.opcode in _DATA else 0)
            for event in self.conn.events if isinstance(event, Frame))
        super().handle_events()

    def _over_budget(self) -> bool:
        now = self.loop.time()
        self._budget = min(float(READ_BURST),
                           self._budget + (now - self._counted_at) * READ_PER_SECOND)
        self._counted_at = now
        return self._budget < 0

    def _refilled(self) -> None:
        self._refill = None
        if self.transport.is_closing():
            return
        self.data_received(b"")
        if self._refill is None and not self.read_paused and not self._writes_backed_up:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writes_backed_up = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writes_backed_up = False
        if not self.read_paused and self._refill is None:  # nor waiting for its read budget
            self.transport.resume_reading()

    async def receive(self) -> ASGIReceiveEvent:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self._writes_backed_up and self._refill is None:
                self.transport.resume_reading()
        return message
