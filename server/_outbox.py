"""A chat connection's outbox: the small bounded stream its turns put envelopes into, and the
writer, the only task that touches the socket's send side.

A client that reads slowly fills the outbox, which makes its turns (and their upstream streams)
wait instead of growing a buffer. What queued up while the socket was busy is sent in one go,
the text and reasoning pieces of one turn joined into one frame each.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.llm import DeltaSink, ReasoningDelta, TextDelta
from server import protocol
from server.protocol import Envelope

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SERVICE_RESTART",
    "OUTBOX_SIZE",
    "Close",
    "Outbox",
    "joined",
]

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012

OUTBOX_SIZE = 32


@dataclass(frozen=True)
class Close:
    """Queued after the last envelope: the writer closes the socket with it."""

    code: int
    reason: str


class Outbox:
    """The bounded stream from a connection's tasks to its writer."""

    def __init__(self) -> None:
        send, receive = anyio.create_memory_object_stream[Envelope | Close](OUTBOX_SIZE)
        self._send: MemoryObjectSendStream[Envelope | Close] = send
        self._receive: MemoryObjectReceiveStream[Envelope | Close] = receive
        self.written = anyio.Event()
        """Set once the writer has stopped (close frame sent, or the peer gone)."""

    async def send(self, envelope: Envelope) -> None:
        # A closed outbox means the socket is gone and the turn is being cancelled with it.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._send.send(envelope)

    def send_nowait(self, item: Envelope | Close) -> None:
        """Queue ``item`` now; raises ``anyio.WouldBlock`` when the outbox is full."""
        self._send.send_nowait(item)

    def close(self) -> None:
        self._send.close()
        self._receive.close()

    def deltas(self, request_id: str) -> DeltaSink:
        """A streaming turn's delta sink: the provider's reading task puts each delta straight
        into the outbox (one handoff, to the writer). Without a checkpoint while there is room,
        so the deltas of one network read queue up and the writer joins them; a full outbox
        makes the reader wait (backpressure)."""
        outbox = self._send

        async def deliver(delta: TextDelta | ReasoningDelta) -> None:
            if type(delta) is TextDelta:
                envelope = protocol.text_chunk(request_id, delta.text)
            else:
                envelope = protocol.reasoning_chunk(request_id, delta.text)
            try:
                outbox.send_nowait(envelope)
            except anyio.WouldBlock:
                await self.send(envelope)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the socket is gone: the turn is being cancelled with it

        return deliver

    async def write(self, websocket: WebSocket) -> None:
        """Send everything queued to ``websocket`` until a :class:`Close` or the peer is gone."""
        receive = self._receive
        try:
            async for item in receive:
                batch = [item]
                while len(batch) < OUTBOX_SIZE:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                closing = await _write_batch(websocket, batch)
                if closing:
                    break
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the peer went away; the reader sees the disconnect
        finally:
            self.written.set()


async def _write_batch(websocket: WebSocket, batch: list[Envelope | Close]) -> bool:
    """Send what queued up while the socket was busy, text and reasoning pieces of one turn
    joined into one frame each; True once the close frame is sent."""
    for item in joined(batch) if len(batch) > 1 else batch:
        if isinstance(item, Close):
            await websocket.close(item.code, item.reason)
            return True
        await websocket.send_text(json.dumps(item, separators=(",", ":")))
    return False


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
