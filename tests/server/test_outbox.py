"""The connection's outbox: a turn's deltas never follow its last envelope."""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
from starlette.websockets import WebSocket

from actors.llm import DeltaSink, TextDelta
from server import protocol
from server._outbox import OUTBOX_SIZE, Close, Outbox, encode


async def _put(sink: DeltaSink, text: str) -> None:
    await sink(TextDelta(text))


class _Socket:
    """The two calls the writer makes, recorded (a stand-in for Starlette's socket)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.go = anyio.Event()

    async def send_text(self, text: str) -> None:
        await self.go.wait()  # a client that does not read until told to
        self.frames.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_a_delta_waiting_for_room_when_its_turn_ends_is_dropped() -> None:
    outbox = Outbox()
    socket = _Socket()
    ended = False
    deliver = outbox.deltas("r1", lambda: not ended)
    for index in range(OUTBOX_SIZE):
        outbox.send_nowait(protocol.text_chunk(f"other {index}", "filler"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_put, deliver, "late")  # the provider's reader: waits for room
        await anyio.wait_all_tasks_blocked()
        ended = True  # the turn was cancelled meanwhile
        last = protocol.error("r1", "cancelled", "cancelled")
        tasks.start_soon(outbox.send, last)
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(outbox.write, cast(WebSocket, socket))
        socket.go.set()
        await anyio.wait_all_tasks_blocked()
        outbox.send_nowait(Close(1000, "bye"))
    sent = [frame for frame in socket.frames if frame.get("request_id") == "r1"]
    assert sent == [last]
    assert socket.closed == (1000, "bye")


async def test_a_live_turns_delta_waits_for_room_and_is_sent_in_order() -> None:
    outbox = Outbox()
    socket = _Socket()
    deliver = outbox.deltas("r1", lambda: True)
    for index in range(OUTBOX_SIZE):
        outbox.send_nowait(protocol.text_chunk(f"other {index}", "filler"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_put, deliver, "next")
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(outbox.write, cast(WebSocket, socket))
        socket.go.set()
        await anyio.wait_all_tasks_blocked()
        outbox.send_nowait(Close(1000, "bye"))
    assert [frame for frame in socket.frames if frame.get("request_id") == "r1"] == [
        protocol.text_chunk("r1", "next")]
    assert len(socket.frames) == OUTBOX_SIZE + 1


class _FastSocket(_Socket):
    """A client that reads at once; records which task sent each frame."""

    def __init__(self) -> None:
        super().__init__()
        self.go.set()
        self.senders: list[str | None] = []

    async def send_text(self, text: str) -> None:
        self.senders.append(anyio.get_current_task().name)
        await super().send_text(text)


@pytest.mark.parametrize("paced", [True, False])
async def test_a_delta_is_sent_by_its_own_task_unless_the_socket_is_busy(paced: bool) -> None:
    """Paced deltas (a loop turn apart) are sent by the reading task itself; the rest of a burst
    (no loop turn between them) queues behind the first and goes out joined, by the writer."""
    outbox = Outbox()
    socket = _FastSocket()
    deliver = outbox.deltas("r1", lambda: True)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(outbox.write, cast(WebSocket, socket), name="writer")
        await anyio.wait_all_tasks_blocked()
        for word in ("one ", "network ", "read"):
            await deliver(TextDelta(word))
            if paced:
                await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        outbox.send_nowait(Close(1000, "bye"))
    me = anyio.get_current_task().name
    if paced:
        assert socket.frames == [protocol.text_chunk("r1", w) for w in ("one ", "network ", "read")]
        assert socket.senders == [me] * 3
    else:
        assert socket.frames == [protocol.text_chunk("r1", "one "),
                                 protocol.text_chunk("r1", "network read")]
        assert socket.senders == [me, "writer"]
    assert socket.closed == (1000, "bye")


async def test_what_comes_during_a_direct_send_waits_for_it_and_keeps_its_order() -> None:
    outbox = Outbox()
    socket = _Socket()  # holds every send until `go`
    deliver = outbox.deltas("r1", lambda: True)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(outbox.write, cast(WebSocket, socket))
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(_put, deliver, "first")  # sends itself, then waits in the socket
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(_put, outbox.deltas("r2", lambda: True), "other")  # queues
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(_put, deliver, "second")  # queues behind it
        await anyio.wait_all_tasks_blocked()
        await outbox.send(protocol.error("r1", "cancelled", "cancelled"))
        assert socket.frames == []
        socket.go.set()
        await anyio.wait_all_tasks_blocked()
        outbox.send_nowait(Close(1000, "bye"))
    assert socket.frames == [protocol.text_chunk("r1", "first"), protocol.text_chunk("r2", "other"),
                             protocol.text_chunk("r1", "second"),
                             protocol.error("r1", "cancelled", "cancelled")]


async def test_a_direct_send_to_a_gone_peer_stops_direct_sends_and_raises_nothing() -> None:
    class _Gone(_FastSocket):
        async def send_text(self, text: str) -> None:
            self.senders.append(anyio.get_current_task().name)
            raise OSError("connection reset")

    outbox = Outbox()
    socket = _Gone()
    deliver = outbox.deltas("r1", lambda: True)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(outbox.write, cast(WebSocket, socket), name="writer")
        await anyio.wait_all_tasks_blocked()
        await deliver(TextDelta("lost with the peer"))  # tried directly: fails, no raise
        await anyio.lowlevel.checkpoint()
        await deliver(TextDelta("queued"))  # no more direct sends: the writer's, which stops
        await anyio.wait_all_tasks_blocked()
        assert outbox.written.is_set()
    assert socket.senders == [anyio.get_current_task().name, "writer"]
    outbox.close()


def test_frames_are_compact_json_and_a_lone_surrogate_is_escaped_not_an_error() -> None:
    envelope = protocol.text_chunk("r1", "caf\u00e9 \ud800")
    text = encode(envelope)
    assert json.loads(text) == envelope
    assert encode(protocol.text_chunk("r1", "hi")) == (
        '{"request_id":"r1","status":"chunk","chunk":{"type":"text","data":"hi"}}')
