"""Fuzzing ``/ws/chat`` of a real server process: any frame gets an ``error`` envelope, a turn,
or (oversized) close code 1009; the socket, or else the server, keeps serving (invariant 7).

Each example opens a socket, sends one fuzzed frame, then a good chat frame on the same socket
(or, if the server closed it, on a new one) which must complete. What the fuzzed frame must get is
decided by what it is: larger than ``max_message_bytes`` → close 1009; not a valid frame (by the
server's own parser, :func:`server.protocol.parse_frame`) → an ``error`` envelope before the probe's
envelopes; a valid chat frame → its turn ends exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from server.protocol import ChatFrame, ProtocolError, parse_frame
from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat_frame,
    connect,
    receive,
    write_config,
)

MAX_BYTES = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    directory = tmp_path_factory.mktemp("ws-fuzz")
    simulator = SimulatorChild(directory=directory)
    try:
        config = write_config(directory, simulator_url=simulator.url, mcp_servers={},
                              server={"max_message_bytes": MAX_BYTES,
                                      "max_messages_per_minute": 100_000,
                                      "max_concurrent_turns": 16})
        child = ServerChild(config)
        try:
            yield child
            assert child.process.poll() is None, "the server died during fuzzing:\n" + child.output
        finally:
            assert child.stop() == 0, child.output
    finally:
        simulator.stop()


json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.sampled_from(["chat", "cancel", "clear_history", ""]))
frames_like_ours = st.fixed_dictionaries(
    {},
    optional={
        "action": st.one_of(st.sampled_from(["chat", "cancel", "clear_history", "CHAT", "x"]),
                            json_values),
        "request_id": st.one_of(st.text(max_size=40), json_values),
        "payload": st.one_of(
            st.fixed_dictionaries({}, optional={
                "text": field_values, "streaming": field_values, "metadata": field_values,
                "conversation_id": field_values}),
            json_values),
        "conversation_id": field_values,
    },
)
frames: st.SearchStrategy[str | bytes] = st.one_of(
    frames_like_ours.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.sampled_from(["{", "[]", "null", '{"action": "chat"}', '{"action": "chat", "payload": {}}',
                     '{"action":"chat","request_id":"r","payload":{"text":""}}',
                     "\u0000", json.dumps({"a": [[[[[[[[[[1]]]]]]]]]]})]),
    st.integers(MAX_BYTES + 1, 3 * MAX_BYTES).map(lambda n: "x" * n),
    st.integers(MAX_BYTES + 1, 3 * MAX_BYTES).map(lambda n: json.dumps(
        chat_frame("y" * n, request_id="huge"))),
)


def expectation(frame: str | bytes) -> str:
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        return "close_1009"
    if isinstance(frame, bytes):
        return "error"
    try:
        parsed = parse_frame(frame)
    except ProtocolError:
        return "error"
    return "turn" if isinstance(parsed, ChatFrame) else "nothing"


async def probe(ws: Any, envelopes: list[dict[str, Any]]) -> None:
    """Send a good chat frame and read until it completes, keeping every envelope seen."""
    request_id = f"probe-{uuid.uuid4().hex[:8]}"
    await ws.send(json.dumps(chat_frame("still there?", request_id=request_id)))
    with anyio.fail_after(20):
        while True:
            envelope = await receive(ws, 20)
            envelopes.append(envelope)
            if envelope.get("request_id") == request_id and envelope["status"] in (
                    "complete", "error"):
                assert envelope["status"] == "complete", envelope
                return


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frame=frames)
async def test_any_frame_gets_an_answer_and_the_socket_keeps_serving(
        server: ServerChild, frame: str | bytes) -> None:
    expected = expectation(frame)
    envelopes: list[dict[str, Any]] = []
    ws = await connect(server.ws_url)
    try:
        await ws.send(frame)
        try:
            await probe(ws, envelopes)
        except ConnectionClosed as closed:
            assert expected == "close_1009", (frame[:80], closed)
            assert closed.rcvd is not None and closed.rcvd.code == 1009, closed
            ws = await connect(server.ws_url)
            await probe(ws, [])
            return
        assert expected != "close_1009", f"an oversized frame was served: {envelopes[:3]}"
        fuzz = [e for e in envelopes if not str(e.get("request_id") or "").startswith("probe-")]
        if expected == "error":
            assert fuzz and fuzz[0]["status"] == "error", (frame[:80], envelopes)
            assert isinstance(fuzz[0]["chunk"]["error"], str), fuzz[0]
        elif expected == "turn":
            ends = [e for e in fuzz if e["status"] in ("complete", "error")]
            # Its turn runs alongside the probe; it may still be running. At most one end.
            assert len(ends) <= 1, ends
    finally:
        await ws.close()


async def test_a_socket_survives_a_hundred_bad_frames_in_a_row(server: ServerChild) -> None:
    ws = await connect(server.ws_url)
    try:
        bad: list[str | bytes] = ["{", "[1]", '{"action": 5}', b"\x00\xff", "null"]
        for index in range(100):
            await ws.send(bad[index % 5])
        errors = 0
        with anyio.fail_after(20):
            while errors < 100:
                envelope = await receive(ws)
                assert envelope["status"] == "error", envelope
                errors += 1
        await probe(ws, [])
    finally:
        await ws.close()
