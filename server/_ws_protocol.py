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

The process has a budget of its own, shared by all its sockets (:class:`ProcessReadBudget`,
``server.max_read_bytes_per_second``, counted the same way): per-socket budgets alone let 20
flooding sockets make the server parse 20 times what one may (77,000 frames a second). A socket
with something to parse while the process is over its budget waits, unparsed and not read, in a
queue served in fair order: each socket's place is what it has been given (counted from where
the queue stood when it last came back from being idle) plus the bytes it is about to parse, the
least first, one slice at a time. A quiet socket (a ping, a chat message) thus goes before floods
with a whole slice to parse, however many wait: ordering by what was given alone (start-time fair
queuing) put it after every flood tied with it, a whole round (2.7 s with 20 floods at 2 MiB/s);
adding what a socket's last slice cost put a socket whose last message was a chat turn after
floods that had not been read yet (1.1-1.3 s). A flood waits its turn but is neither starved
(every turn moves the one served back by what it cost) nor closed. An idle socket costs the
budget nothing: no timer, no place in the queue.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

from server._linger import Lingering

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent

__all__ = ["FRAME_COST", "MESSAGE_COST", "PROCESS_READ_PER_SECOND", "READ_BURST",
           "READ_PER_SECOND", "SLICE_BYTES", "WS_PROTOCOL", "FlowControlledWebSocket",
           "ProcessReadBudget", "ws_protocol"]

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
SLICE_BYTES: Final = 4096
"""Bytes parsed between two looks at the budgets (at most ~680 frames of 6 bytes)."""
PROCESS_READ_PER_SECOND: Final = 16 * 2**20
"""The default of ``server.max_read_bytes_per_second``: ~1,000 small messages or 65,536 frames
a second for the whole process (a quarter of a core of parsing, by the costs above); a chat load
sends a few messages a second per hundred users."""

#: What uvicorn's ``ws`` setting names: this module's protocol, by import path (uvicorn imports it
#: when the server starts, in each worker), with the process budget at its default.
WS_PROTOCOL = f"{__name__}:FlowControlledWebSocket"

_TOLERANCE: Final = 1.0
"""A byte of debt is none: a refill timer may fire a hair early."""
_SHORTEST_WAIT: Final = 0.001


@dataclass(order=True)
class _Waiting:
    place: float
    order: int
    start: float = field(compare=False)
    reader: FlowControlledWebSocket | None = field(compare=False)
    """``None`` once its connection is lost (left in the heap, skipped when it comes up)."""


class ProcessReadBudget:
    """The read budget all the sockets of a process share: ``per_second`` bytes a second,
    counted as the per-socket budget counts them, at most one second's worth at once.

    Not thread-safe: the sockets of one event loop share it. ``repr`` shows its state.
    """

    def __init__(self, per_second: float) -> None:
        self.per_second = float(per_second)
        self.burst = float(per_second)
        self._tokens = self.burst
        self._counted_at: float | None = None
        self._virtual = 0.0
        """Where the slice given last started: where a socket that was idle starts again."""
        self._waiting: list[_Waiting] = []
        self._queued: dict[FlowControlledWebSocket, _Waiting] = {}
        self._order = itertools.count()
        self._serve_at: asyncio.TimerHandle | None = None
        self._serving = False

    def __repr__(self) -> str:
        return (f"<ProcessReadBudget [{self._tokens:.0f} of {self.burst:.0f} bytes |"
                f" {len(self._queued)} waiting]>")

    def admit(self, reader: FlowControlledWebSocket, size: int) -> bool:
        """Whether ``reader`` may parse a slice of ``size`` bytes now; if not, it is queued and
        its :meth:`FlowControlledWebSocket.budget_granted` called in its turn."""
        if reader in self._queued:
            return False
        self._refill(reader.loop)
        start = max(reader.read_tag, self._virtual)
        place = start + size
        if self._tokens >= -_TOLERANCE and (not self._waiting or place <= self._waiting[0].place):
            self._virtual = start
            reader.read_tag = start
            return True
        entry = _Waiting(place, next(self._order), start, reader)
        heapq.heappush(self._waiting, entry)
        self._queued[reader] = entry
        self._schedule(reader.loop)
        return False

    def charge(self, reader: FlowControlledWebSocket, cost: float) -> None:
        """Count what ``reader`` has just parsed (the debt may go below zero: it is paid
        before anyone else reads)."""
        self._tokens -= cost
        reader.read_tag += cost

    def forget(self, reader: FlowControlledWebSocket) -> None:
        """``reader``'s connection is lost: take it out of the queue."""
        entry = self._queued.pop(reader, None)
        if entry is not None:
            entry.reader = None

    def waiting(self, reader: FlowControlledWebSocket) -> bool:
        """Whether ``reader`` is queued for its turn."""
        return reader in self._queued

    def _refill(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if self._counted_at is not None:
            self._tokens = min(self.burst,
                               self._tokens + (now - self._counted_at) * self.per_second)
        self._counted_at = now

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._serve_at is None and not self._serving and self._waiting:
            wait = max(_SHORTEST_WAIT, -self._tokens / self.per_second)
            self._serve_at = loop.call_later(wait, self._serve, loop)

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self._serve_at = None
        self._serving = True
        try:
            self._refill(loop)
            while self._waiting and self._tokens >= -_TOLERANCE:
                entry = heapq.heappop(self._waiting)
                reader = entry.reader
                if reader is None:
                    continue
                del self._queued[reader]
                # Its turn: it parses one slice, then queues again behind whoever has had less.
                self._virtual = max(self._virtual, entry.start)
                reader.budget_granted()
        finally:
            self._serving = False
            self._schedule(loop)


class FlowControlledWebSocket(WebSocketsSansIOProtocol):
    """``websockets-sansio`` that stops reading a peer while its writes are backed up, or while
    it or the process is over its read budget (module docstring)."""

    _writes_backed_up = False

    def __init__(self, *args: Any, read_budget: ProcessReadBudget | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._budget = float(READ_BURST)
        self._counted_at = self.loop.time()
        self._unparsed = b""
        """Read while over a budget: parsed once the budget has refilled."""
        self._refill: asyncio.TimerHandle | None = None
        self._process = read_budget if read_budget is not None else _default_budget()
        self.read_tag = 0.0
        """What this socket has been given, in the process budget's fair order."""
        self._lingering: Lingering | None = None

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:  # refused: nothing more is parsed
            self._lingering.discard(data)
            return
        data = self._unparsed + data if self._unparsed else data
        self._unparsed = b""
        # By offset: cutting the rest off after each slice copied it (a 256 KiB read, ~8 MiB).
        for start in range(0, len(data), SLICE_BYTES):
            if self._over_budget():
                self._unparsed = data[start:]
                self.transport.pause_reading()
                wait = -self._budget / READ_PER_SECOND
                self._refill = self.loop.call_later(wait, self._refilled)
                return
            if not self._process.admit(self, min(SLICE_BYTES, len(data) - start)):
                self._unparsed = data[start:]
                self.transport.pause_reading()
                return
            super().data_received(
                data[start:start + SLICE_BYTES] if len(data) > SLICE_BYTES else data)
            if self._lingering is not None:
                self._lingering.discard(data[start + SLICE_BYTES:])
                return
            if self.transport.is_closing():
                return

    def handle_events(self) -> None:
        cost = sum(
            max(FRAME_COST, len(event.data))
            + (MESSAGE_COST if event.fin and event.opcode in _DATA else 0)
            for event in self.conn.events if isinstance(event, Frame))
        self._budget -= cost
        self._process.charge(self, cost)
        super().handle_events()

    def _over_budget(self) -> bool:
        now = self.loop.time()
        self._budget = min(float(READ_BURST),
                           self._budget + (now - self._counted_at) * READ_PER_SECOND)
        self._counted_at = now
        return self._budget < 0

    def _budget_waiting(self) -> bool:
        return self._refill is not None or self._process.waiting(self)

    def _refilled(self) -> None:
        self._refill = None
        self.budget_granted()

    def budget_granted(self) -> None:
        """Parse what waited for a budget, and read again if nothing else holds the socket."""
        if self.transport.is_closing():
            return
        self.data_received(b"")
        if not self._budget_waiting() and not self.read_paused and not self._writes_backed_up:
            self.transport.resume_reading()

    def handle_parser_exception(self) -> None:
        """uvicorn's, but closing lingering (:mod:`server._linger`): the close frame (1009 for a
        message over ``max_message_bytes``, 1007, 1002) reaches a peer still sending."""
        assert self.conn.close_sent is not None
        self.queue.put_nowait({"type": "websocket.disconnect", "code": self.conn.close_sent.code,
                               "reason": self.conn.close_sent.reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._unparsed = b""
        self._lingering = Lingering(self.transport, self.loop)
        # uvicorn's own close timer: the app ending then leaves the socket to it (and a
        # shutdown or the connection's loss cancels it).
        self.close_timer = self._lingering.timer

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        self._process.forget(self)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writes_backed_up = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writes_backed_up = False
        if not self.read_paused and not self._budget_waiting():
            self.transport.resume_reading()

    async def receive(self) -> ASGIReceiveEvent:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self._writes_backed_up and not self._budget_waiting():
                self.transport.resume_reading()
        return message


@functools.cache
def _default_budget() -> ProcessReadBudget:
    """The process budget of a protocol named by :data:`WS_PROTOCOL` (one per process)."""
    return ProcessReadBudget(PROCESS_READ_PER_SECOND)


def ws_protocol(read_per_second: int) -> functools.partial[FlowControlledWebSocket]:
    """What uvicorn's ``ws`` setting takes: the protocol, its sockets sharing one process budget
    of ``read_per_second`` (built here: call it in the process that serves)."""
    return functools.partial(FlowControlledWebSocket,
                             read_budget=ProcessReadBudget(read_per_second))
