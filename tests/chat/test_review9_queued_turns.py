"""Review 9: a turn queued behind its conversation's running turn, and a refused turn at the
store's bound.

A queued turn's message is written (as a queued message, apart from the history) when the turn
is accepted; it joins the history, in queue order, when the turn starts. A real server
SIGKILLed while two turns wait, restarted on the same database: the conversation resumed holds
both messages after the killed turn's, in the order they were sent. A queued turn cancelled or
refused leaves nothing behind. With ``max_stored_messages`` equal to ``max_history_messages``, a
refused turn leaves every stored message where it was (before, its start write trimmed the
oldest and the take-back did not restore it).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import anyio

from actors.chat import HistoryStore
from tests.server_harness import (
    Envelope,
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    receive,
    send,
    text_of,
    until_end,
    write_config,
)

_NO_FAULTS: dict[str, Any] = {"faults": {"first_byte_delay": 0.0, "chunk_delay": 0.0,
                                         "rate_500": 0.0, "rate_midstream_error": 0.0}}


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _answer(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _stored(directory: Path, conversation_id: str) -> list[dict[str, Any]]:
    with HistoryStore(directory / "history.sqlite3") as history:
        return history.load(conversation_id)


def _wait_for_streams(simulator: SimulatorChild, started: int) -> None:
    """Until the simulator has begun ``started`` streams (10 s at most)."""
    deadline = time.monotonic() + 10.0
    while simulator.stats()["streams"]["started"] < started:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the simulator never began stream {started}")
        time.sleep(0.02)


async def _processing(ws: Any, request_id: str) -> Envelope:
    """The ``processing`` envelope of ``request_id`` (others' envelopes skipped; 10 s)."""
    with anyio.fail_after(10):
        while True:
            envelope = await receive(ws)
            if envelope["request_id"] == request_id:
                assert envelope["status"] == "processing", envelope
                return envelope


async def _queue_behind_a_slow_turn(
    simulator: SimulatorChild, ws: Any, conversation_id: str, delay: float, *texts: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start a turn ``"first"`` whose answer is held back ``delay`` s, then send ``texts`` on
    the same conversation: they wait behind it. Returns the frames (first, then the queued)."""
    started = simulator.stats()["streams"]["started"]
    simulator.configure(faults={"first_byte_delay": delay})
    first = chat_frame("first", conversation_id=conversation_id)
    await send(ws, first)
    await _processing(ws, first["request_id"])
    _wait_for_streams(simulator, started + 1)  # the model was called: "first" runs
    queued = []
    for text in texts:
        frame = chat_frame(text, conversation_id=conversation_id)
        await send(ws, frame)
        await _processing(ws, frame["request_id"])
        queued.append(frame)
    return first, queued


async def test_queued_messages_survive_a_sigkill_and_join_the_history_in_queue_order(
    tmp_path: Path,
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    server: ServerChild | None = None
    try:
        config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={})
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        hello = await chat(ws, "hello")
        conversation_id = hello[0]["chunk"]["metadata"]["conversation_id"]
        await _queue_behind_a_slow_turn(simulator, ws, conversation_id, 30.0, "second", "third")
        # Nothing tells a client when its queued message is written: the write follows the
        # acceptance by milliseconds; a second leaves room on a loaded machine.
        await anyio.sleep(1.0)
        assert simulator.stats()["streams"]["started"] == 2  # only "first" reached the model
        server.stop(signal.SIGKILL)
        server = None
        simulator.configure(**_NO_FAULTS)
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        last = await chat(ws, "and now?", conversation_id=conversation_id)
        assert last[-1]["status"] == "complete", last[-1]
        assert text_of(last) == "Echo: and now?"
        assert server.stop() == 0, server.output
        server = None
        assert _stored(tmp_path, conversation_id) == [
            _user("hello"), _answer("Echo: hello"), _user("first"), _user("second"),
            _user("third"), _user("and now?"), _answer("Echo: and now?")]
    finally:
        if server is not None:
            server.kill()
        simulator.stop()


async def test_a_queued_turn_cancelled_or_refused_leaves_nothing_live_or_after_a_restart(
    tmp_path: Path,
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    server: ServerChild | None = None
    try:
        config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={})
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        hello = await chat(ws, "hello")
        conversation_id = hello[0]["chunk"]["metadata"]["conversation_id"]
        first, (cancelled, refused) = await _queue_behind_a_slow_turn(
            simulator, ws, conversation_id, 2.0, "cancelled", "refused")
        await anyio.sleep(0.5)
        await send(ws, {"action": "cancel", "request_id": cancelled["request_id"]})
        ended = await until_end(ws, cancelled["request_id"])
        assert ended[-1]["chunk"]["error_type"] == "cancelled", ended[-1]
        # "first" was sent to the simulator before: only "refused" meets the 500s.
        simulator.configure(faults={"rate_500": 1.0, "first_byte_delay": 0.0})
        answered = await until_end(ws, first["request_id"])
        assert text_of(answered) == "Echo: first"
        ending = await until_end(ws, refused["request_id"])
        assert ending[-1]["status"] == "error", ending[-1]
        simulator.configure(**_NO_FAULTS)
        before = [_user("hello"), _answer("Echo: hello"), _user("first"), _answer("Echo: first")]
        assert _stored(tmp_path, conversation_id) == before
        server.stop(signal.SIGKILL)
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        last = await chat(ws, "and now?", conversation_id=conversation_id)
        assert text_of(last) == "Echo: and now?"
        assert server.stop() == 0, server.output
        server = None
        assert _stored(tmp_path, conversation_id) == [
            *before, _user("and now?"), _answer("Echo: and now?")]
    finally:
        if server is not None:
            server.kill()
        simulator.stop()


async def test_a_refused_turn_at_the_stored_bound_leaves_every_stored_message(
    tmp_path: Path,
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    server: ServerChild | None = None
    try:
        config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={},
                              chat={"max_history_messages": 2, "max_stored_messages": 2})
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        hello = await chat(ws, "hello")
        conversation_id = hello[0]["chunk"]["metadata"]["conversation_id"]
        simulator.configure(faults={"rate_500": 1.0})
        refused = await chat(ws, "this fails", conversation_id=conversation_id)
        assert refused[-1]["status"] == "error", refused[-1]
        simulator.configure(**_NO_FAULTS)
        assert _stored(tmp_path, conversation_id) == [_user("hello"), _answer("Echo: hello")]
        last = await chat(ws, "and now?", conversation_id=conversation_id)
        assert text_of(last) == "Echo: and now?"
        assert _stored(tmp_path, conversation_id) == [_user("and now?"),
                                                      _answer("Echo: and now?")]
        assert server.stop() == 0, server.output
        server = None
    finally:
        if server is not None:
            server.kill()
        simulator.stop()


def test_a_taken_back_start_write_restores_what_the_bound_trimmed(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3", max_stored_messages=3) as history:
        history.append("c1", [_user("a"), _answer("b"), _user("c")])
        start = history.start_turn("c1", _user("d"))
        assert history.load("c1") == [_answer("b"), _user("c"), _user("d")]
        assert history.retract("c1", [_user("d")], restore=start.trimmed) is True
        assert history.load("c1") == [_user("a"), _answer("b"), _user("c")]
        history.append("c1", [_answer("e")])  # later appends go on from the restored rows
        assert history.load("c1") == [_answer("b"), _user("c"), _answer("e")]


def test_queued_messages_join_the_history_only_when_moved_or_adopted(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3", max_stored_messages=4) as history:
        history.append("c1", [_user("a"), _answer("b")])
        second = history.queue("c1", _user("second"))
        third = history.queue("c1", _user("third"))
        history.queue("c2", _user("other"))  # a new conversation: created, so it can expire
        assert history.exists("c2") is True
        history.append("c1", [_answer("running turn's answer")])
        history.start_turn("c1", _user("second"), second)  # moved: not adopted again
        history.unqueue(third)
        assert history.adopt_queued("c1") == 0
        assert history.load("c1") == [
            _user("a"), _answer("b"), _answer("running turn's answer"), _user("second")]
        history.queue("c1", _user("killed 1"))
        history.queue("c1", _user("killed 2"))
        assert history.adopt_queued("c1") == 2  # in the order sent, within the bound
        assert history.load("c1") == [_answer("running turn's answer"), _user("second"),
                                      _user("killed 1"), _user("killed 2")]
        assert history.expire(time.time() + 1) == ["c2", "c1"]  # oldest write first
        assert history.adopt_queued("c2") == 0
        assert history.load("c2") == []
