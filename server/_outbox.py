"""A chat connection's outbox: the small bounded stream its turns put envelopes into, and the
writer, the only task that touches the socket's send side.

A client that reads slowly fills the outbox, which makes its turns (and their upstream streams)
wait instead of growing a buffer. What queued up while the socket was busy is sent in one go,
the text and reasoning pieces of one turn joined into one frame each.

One send at a time touches the socket: the writer's, or a streamed delta's own when nothing is
queued and nothing is being sent. The provider's reading task then writes its frame itself, which
saves the writer's wake-up per delta of a paced stream. What comes until the event loop's next
turn queues behind it for the writer: the rest of a burst (the deltas of one network read) still
goes out joined, and the order holds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.llm import DeltaSink, ReasoningDelta, TextDelta
from runtime import Queue
from server import protocol
from server.protocol import Envelope

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN_LATER",
    "OUTBOX_SIZE",
    "Close",
    "Outbox",
    "encode",
    "joined",
]

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013

OUTBOX_SIZE = 32


@dataclass(frozen=True)
class Close:
    """Queued after the last envelope: the writer closes the socket with it."""

    code: int
    reason: str


class Outbox:
    """The bounded queue from a connection's tasks to its writer: the kernel's
    :class:`runtime.Queue` (no anyio memory stream: a streamed delta crosses it once per upstream
    chunk, and the stream's per-item checkpoint and ``Event`` cost more than the rest of the
    handoff, ``benchmarks/streams.py``). The writer takes everything queued at once."""

    def __init__(self) -> None:
        self._queue: Queue[Envelope | Close] = Queue(OUTBOX_SIZE)
        self._socket: WebSocket | None = None  # while the writer runs: direct sends need it
        self._sending = False  # a send is in progress on the socket (the writer's or a delta's)
        self.written = anyio.Event()
        """Set once the writer has stopped (close frame sent, or the peer gone)."""

    async def _has_room(self) -> bool:
        """Wait while the outbox is full; ``False`` once it is closed."""
        await anyio.lowlevel.checkpoint()
        return await self._queue.wait_room()

    async def send(self, envelope: Envelope) -> None:
        """Queue ``envelope``, waiting while the outbox is full (dropped once it is closed: the
        socket is gone and the turn is being cancelled with it)."""
        if await self._has_room():
            self._queue.put(envelope)

    def send_nowait(self, item: Envelope | Close) -> None:
        """Queue ``item`` now; raises ``anyio.WouldBlock`` when the outbox is full,
        ``anyio.BrokenResourceError`` once it is closed."""
        self._queue.put(item)

    def close(self) -> None:
        """Drop what is queued; the writer stops and senders return."""
        self._socket = None  # no direct send either
        self._queue.break_()

    def deltas(self, request_id: str, live: Callable[[], bool]) -> DeltaSink:
        """A streaming turn's delta sink, awaited by the provider's reading task: a delta is sent
        by that task itself when nothing is queued or being sent (no handoff), else queued for
        the writer without a checkpoint while there is room, so the rest of a network read's
        deltas queue up and the writer joins them; a full outbox or a busy socket makes the
        reader wait (backpressure).

        ``live()`` turns false when the turn has ended: the reading task is not the turn's, so a
        delta it read (or waited to queue) as the turn was cancelled is dropped, never sent
        after the turn's last envelope."""
        queue = self._queue
        items = queue.items
        put = queue.put

        async def deliver(delta: TextDelta | ReasoningDelta) -> None:
            if not live():
                return
            if type(delta) is TextDelta:
                envelope = protocol.text_chunk(request_id, delta.text)
            else:
                envelope = protocol.reasoning_chunk(request_id, delta.text)
            socket = self._socket
            if socket is not None and not items and not self._sending:
                await self._send_now(socket, envelope)
                return
            room = len(items) < OUTBOX_SIZE and queue.open
            if room or (await self._has_room() and live()):  # re-checked after the wait
                put(envelope)

        return deliver

    async def _send_now(self, socket: WebSocket, envelope: Envelope) -> None:
        """Send ``envelope`` from the caller's task (nothing queued, no send in progress); what
        queued meanwhile is the writer's. A failed send means the peer is gone: the reader sees
        the disconnect, and nothing more is sent directly."""
        self._sending = True
        try:
            await socket.send_text(encode(envelope))
        except (WebSocketDisconnect, OSError, RuntimeError):
            self._socket = None
        finally:  # the server runs on asyncio (uvicorn): a plain callback, not a task switch
            asyncio.get_running_loop().call_soon(self._sent)

    def _sent(self) -> None:
        """A loop turn after a direct send: the socket is free; wake the writer for what came."""
        self._sending = False
        if self._queue.items:
            self._queue.wake()

    async def write(self, websocket: WebSocket) -> None:
        """Send everything queued to ``websocket`` until a :class:`Close`, the outbox is closed
        or the peer is gone."""
        queue = self._queue
        items = queue.items
        self._socket = websocket
        try:
            while queue.open:
                if not items or self._sending:
                    await queue.wait()
                    continue
                batch = queue.take_all()
                self._sending = True
                try:
                    if await _write_batch(websocket, batch):
                        break
                finally:
                    self._sending = False
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the peer went away; the reader sees the disconnect
        finally:
            self._socket = None
            self.written.set()


async def _write_batch(websocket: WebSocket, batch: list[Envelope | Close]) -> bool:
    """Send what queued up while the socket was busy, text and reasoning pieces of one turn
    joined into one frame each; True once the close frame is sent."""
    for item in joined(batch) if len(batch) > 1 else batch:
        if isinstance(item, Close):
            await websocket.close(item.code, item.reason)
            return True
        await websocket.send_text(encode(item))
    return False


_encode_json = msgspec.json.Encoder().encode


def encode(envelope: Envelope) -> str:
    """``envelope`` as compact JSON text (msgspec: ~15x faster than ``json.dumps`` here, one call
    per frame). Text msgspec cannot encode as UTF-8 (a lone surrogate from an upstream's
    ``\\ud800`` escape) goes through ``json.dumps``, which escapes it."""
    try:
        return _encode_json(envelope).decode()
    except (UnicodeEncodeError, TypeError, msgspec.EncodeError):
        return json.dumps(envelope, separators=(",", ":"))


def joined(batch: list[Envelope | Close]) -> list[Envelope | Close]:
    """Consecutive text (or reasoning) chunks of one request as one chunk; the rest in order."""
    out: list[Envelope | Close] = []
    for item in batch:
        previous = out[-1] if out else None
        if (isinstance(item, dict) and isinstance(previous, dict) and _is_piece(item)
                and _is_piece(previous) and previous["request_id"] == item["request_id"]
                and previous["chunk"]["type"] == item["chunk"]["type"]):
            chunk = previous["chunk"]
            data = chunk["data"] + item["chunk"]["data"]
            out[-1] = {**previous, "chunk": {**chunk, "data": data}}
            continue
        out.append(item)
    return out


def _is_piece(envelope: Envelope) -> bool:
    return envelope.get("status") == "chunk" and envelope["chunk"].get("type") in (
        "text", "reasoning")
