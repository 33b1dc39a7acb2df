"""Review 8: the user's message is stored once its turn is accepted, before the model is called.

A real server SIGKILLed while the model has not answered yet (its first byte held back) or is
still streaming its first answer, restarted on the same database: the message is there once,
and the next turn goes on from it (two user messages in a row, which OpenAI-compatible APIs
accept). A turn that ends in an error leaves the same history live and after a restart.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

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


def _conversation_of(envelope: Envelope) -> str:
    conversation_id: str = envelope["chunk"]["metadata"]["conversation_id"]
    return conversation_id


def _wait_for_streams(simulator: SimulatorChild, started: int) -> None:
    """Until the simulator has begun ``started`` streams: the model was called (10 s at most)."""
    deadline = time.monotonic() + 10.0
    while simulator.stats()["streams"]["started"] < started:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the simulator never began stream {started}")
        time.sleep(0.02)


async def test_a_message_whose_model_had_not_answered_yet_survives_a_sigkill(
    tmp_path: Path,
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    server: ServerChild | None = None
    try:
        config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={})
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        first = await chat(ws, "hello")
        assert first[-1]["status"] == "complete", first[-1]
        conversation_id = _conversation_of(first[0])
        simulator.configure(faults={"first_byte_delay": 5.0})
        await send(ws, chat_frame("are you there?", conversation_id=conversation_id))
        _wait_for_streams(simulator, 2)  # the model was called: the turn was accepted
        server.stop(signal.SIGKILL)
        server = None
        assert _stored(tmp_path, conversation_id) == [
            _user("hello"), _answer("Echo: hello"), _user("are you there?")]
        simulator.configure(**_NO_FAULTS)
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        last = await chat(ws, "and now?", conversation_id=conversation_id)
        assert last[-1]["status"] == "complete", last[-1]
        assert text_of(last) == "Echo: and now?"
        assert server.stop() == 0, server.output
        server = None
        assert _stored(tmp_path, conversation_id) == [
            _user("hello"), _answer("Echo: hello"), _user("are you there?"),
            _user("and now?"), _answer("Echo: and now?")]
    finally:
        if server is not None:
            server.kill()
        simulator.stop()


async def test_a_first_message_killed_while_its_answer_streams_survives_a_sigkill(
    tmp_path: Path,
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    server: ServerChild | None = None
    try:
        config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={})
        # One event a second: the answer of six words streams for about seven seconds.
        simulator.configure(faults={"chunk_delay": 1.0})
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        await send(ws, chat_frame("tell me about the sea"))
        processing = await receive(ws)
        assert processing["status"] == "processing", processing
        conversation_id = _conversation_of(processing)
        with anyio.fail_after(15):
            while (await receive(ws))["chunk"].get("type") != "text":
                pass
        server.stop(signal.SIGKILL)
        server = None
        assert _stored(tmp_path, conversation_id) == [_user("tell me about the sea")]
        simulator.configure(**_NO_FAULTS)
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        last = await chat(ws, "and now?", conversation_id=conversation_id)
        assert last[-1]["status"] == "complete", last[-1]
        assert text_of(last) == "Echo: and now?"
        assert server.stop() == 0, server.output
        server = None
        assert _stored(tmp_path, conversation_id) == [
            _user("tell me about the sea"), _user("and now?"), _answer("Echo: and now?")]
    finally:
        if server is not None:
            server.kill()
        simulator.stop()


async def _failing_turn(simulator: SimulatorChild, ws: Any, conversation_id: str,
                        fault: str) -> Envelope:
    simulator.configure(faults={fault: 1.0})
    try:
        envelopes = await chat(ws, "this fails", conversation_id=conversation_id)
    finally:
        simulator.configure(**_NO_FAULTS)
    return envelopes[-1]


@pytest.mark.parametrize(("fault", "kept"), [
    ("rate_500", []),  # refused before anything was answered: taken back
    ("rate_midstream_error", [_user("this fails")]),  # some of the answer was streamed: kept
])
async def test_a_turn_ending_in_an_error_leaves_the_same_history_live_and_after_a_restart(
    tmp_path: Path, fault: str, kept: list[dict[str, str]],
) -> None:
    simulator = SimulatorChild(directory=tmp_path)
    server: ServerChild | None = None
    try:
        config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={})
        server = ServerChild(config)
        conversations = []
        for _ in range(2):  # the same turns twice: one goes on live, one after the restart
            ws = await connect(server.ws_url)  # a socket's chat goes to its own conversation
            first = await chat(ws, "hello")
            conversation_id = _conversation_of(first[0])
            ending = await _failing_turn(simulator, ws, conversation_id, fault)
            assert ending["status"] == "error", ending
            conversations.append(conversation_id)
        live, resumed = conversations
        before = [_user("hello"), _answer("Echo: hello"), *kept]
        assert _stored(tmp_path, live) == _stored(tmp_path, resumed) == before
        last = await chat(ws, "and now?", conversation_id=live)
        assert text_of(last) == "Echo: and now?"
        live_prompt = simulator.stats()["log"][-1][2]
        server.stop(signal.SIGKILL)
        server = ServerChild(config)
        ws = await connect(server.ws_url)
        last = await chat(ws, "and now?", conversation_id=resumed)
        assert text_of(last) == "Echo: and now?"
        assert simulator.stats()["log"][-1][2] == live_prompt  # the same messages were sent
        assert server.stop() == 0, server.output
        server = None
        after = [*before, _user("and now?"), _answer("Echo: and now?")]
        assert _stored(tmp_path, live) == _stored(tmp_path, resumed) == after
    finally:
        if server is not None:
            server.kill()
        simulator.stop()
