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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent

__all__ = ["WS_PROTOCOL", "FlowControlledWebSocket"]

#: What uvicorn's ``ws`` setting names: this module's protocol, by import path (uvicorn imports it
#: when the server starts, in each worker).
WS_PROTOCOL = f"{__name__}:FlowControlledWebSocket"


class FlowControlledWebSocket(WebSocketsSansIOProtocol):
    """``websockets-sansio`` that stops reading a peer while its writes are backed up."""

    _writes_backed_up = False

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writes_backed_up = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writes_backed_up = False
        if not self.read_paused:  # the app's queue of received messages has room
            self.transport.resume_reading()

    async def receive(self) -> ASGIReceiveEvent:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self._writes_backed_up:
                self.transport.resume_reading()
        return message
