"""The connection's outbox: a turn's deltas never follow its last envelope."""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
from starlette.websockets import WebSocket

from actors.llm import DeltaSink, TextDelta
from server import protocol
from server._outbox import OUTBOX_SIZE, Close, Outbox


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
