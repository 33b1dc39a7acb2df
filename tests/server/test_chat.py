"""End to end: a real ``mcp-backend serve`` process, a real simulator, a real WebSocket client.

One server (with the demo MCP server and the third-party ``mcp-server-time``) serves every test of
this module; tests that slow the simulator down restore it afterwards.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from tests.server_harness import (
    VENV_BIN,
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    http_get,
    receive,
    send,
    text_of,
    tool_events,
    until_end,
    write_config,
)

MAX_MESSAGE_BYTES = 8192
MESSAGES_PER_MINUTE = 40
CONCURRENT_TURNS = 2
LONG_TEXT = " ".join(f"word{i}" for i in range(400))  # echoed back: about 400 chunks


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def simulator(workdir: Path) -> Iterator[SimulatorChild]:
    sim = SimulatorChild(directory=workdir)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def server(workdir: Path, simulator: SimulatorChild) -> Iterator[ServerChild]:
    config = write_config(
        workdir,
        simulator_url=simulator.url,
        server={
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "max_messages_per_minute": MESSAGES_PER_MINUTE,
            "max_concurrent_turns": CONCURRENT_TURNS,
        },
        mcp_servers={
            "demo": {"command": sys.executable, "args": ["-m", "server.demo_mcp_server"]},
            "time": {"command": str(VENV_BIN / "mcp-server-time")},
        },
    )
    child = ServerChild(config)
    yield child
    assert child.stop() == 0, child.output


@pytest.fixture
def slow_stream(simulator: SimulatorChild) -> Iterator[None]:
    """Every streamed chunk takes 20 ms: a long answer takes seconds."""
    simulator.configure(faults={"chunk_delay": 0.02})
    yield
    simulator.configure(faults={"chunk_delay": 0.0})


def _statuses(envelopes: list[dict[str, Any]]) -> list[str]:
    return [e["status"] for e in envelopes]


# -- the protocol as the existing frontend speaks it --------------------------------------------


async def test_chat_streams_processing_then_text_chunks_then_complete(
    server: ServerChild, slow_stream: None
) -> None:
    async with await connect(server.ws_url) as ws:
        envelopes = await chat(ws, "hello there", request_id="r-1")
    statuses = _statuses(envelopes)
    assert statuses[0] == "processing"
    assert statuses[-1] == "complete"
    # The answer arrives in pieces, word by word as the simulator sends them (20 ms apart).
    assert [e["chunk"] for e in envelopes[1:-1]] == [
        {"type": "text", "data": word} for word in ("Echo:", " hello", " there")
    ]
    assert all(e["request_id"] == "r-1" for e in envelopes)
    assert envelopes[0]["chunk"]["metadata"]["user_message"] == "hello there"
    assert text_of(envelopes) == "Echo: hello there"
    complete = envelopes[-1]["chunk"]
    assert complete["provider"] == "sim"
    assert complete["model"] == "gpt-4o-mini"
    assert complete["usage"]["completion_tokens"] == 3
    assert isinstance(complete["cost"], float)


async def test_non_streaming_chat_sends_the_whole_answer_as_one_chunk(server: ServerChild) -> None:
    async with await connect(server.ws_url) as ws:
        envelopes = await chat(ws, "all at once", streaming=False)
    assert _statuses(envelopes) == ["processing", "chunk", "complete"]
    assert envelopes[1]["chunk"] == {"type": "text", "data": "Echo: all at once"}


# -- extensions ---------------------------------------------------------------------------------


async def test_demo_mcp_tool_call_is_reported_started_and_finished(server: ServerChild) -> None:
    async with await connect(server.ws_url) as ws:
        envelopes = await chat(ws, 'please call add {"a": 2, "b": 3}')
    assert envelopes[-1]["status"] == "complete", envelopes[-1]
    started, finished = tool_events(envelopes)
    assert started["type"] == "tool_call_started"
    assert started["data"]["server"] == "demo"
    assert started["data"]["tool"] == "add"
    assert started["data"]["arguments"] == {"a": 2, "b": 3}
    assert finished["type"] == "tool_call_finished"
    assert finished["data"]["call_id"] == started["data"]["call_id"]
    assert finished["data"]["is_error"] is False
    assert finished["data"]["result_preview"] == "5.0"
    duration_ms = finished["data"]["duration_ms"]
    assert isinstance(duration_ms, float)
    assert duration_ms == round(duration_ms, 1)
    assert text_of(envelopes) == "Tool add returned: 5.0"
    assert envelopes[-1]["chunk"]["hops"] == 1


async def test_third_party_mcp_server_tool_call(server: ServerChild) -> None:
    async with await connect(server.ws_url) as ws:
        envelopes = await chat(ws, 'call get_current_time {"timezone": "UTC"}')
    assert envelopes[-1]["status"] == "complete", envelopes[-1]
    started, finished = tool_events(envelopes)
    assert (started["data"]["server"], started["data"]["tool"]) == ("time", "get_current_time")
    assert finished["data"]["is_error"] is False
    assert "UTC" in finished["data"]["result_preview"]


async def test_cancel_ends_the_turn_with_a_cancelled_error_and_stops_upstream(
    server: ServerChild, simulator: SimulatorChild, slow_stream: None
) -> None:
    aborted = simulator.stats()["streams"]["aborted_by_client"]
    async with await connect(server.ws_url) as ws:
        frame = chat_frame(LONG_TEXT)
        await send(ws, frame)
        assert (await receive(ws))["status"] == "processing"
        assert (await receive(ws))["status"] == "chunk"
        await send(ws, {"action": "cancel", "request_id": frame["request_id"]})
        envelopes = await until_end(ws, frame["request_id"], timeout=5)
        assert envelopes[-1]["status"] == "error"
        assert envelopes[-1]["chunk"]["error_type"] == "cancelled"
        # The socket is still usable, and a late cancel of an ended turn is ignored.
        await send(ws, {"action": "cancel", "request_id": frame["request_id"]})
        simulator.configure(faults={"chunk_delay": 0.0})
        assert (await chat(ws, "still here"))[-1]["status"] == "complete"
    await _until_aborted(simulator, aborted + 1)


async def test_a_turn_cancelled_while_its_conversation_starts_does_not_block_the_next(
    server: ServerChild, simulator: SimulatorChild
) -> None:
    """Regression (found by the server chaos run, seed 3): the first turn of a connection spawns
    the conversation's SessionActor inside the turn's task; a cancel arriving meanwhile cancelled
    the spawn half-way, the actor stayed registered without running, and every later turn of
    that conversation waited after ``processing`` for ever (about 4 in 10). The simulator answers
    after 0.3 s, so each cancel lands before the answer."""
    simulator.configure(faults={"latency": 0.3})
    try:
        for _ in range(10):
            async with await connect(server.ws_url) as ws:
                cancelled = chat_frame("cancelled at once")
                await send(ws, cancelled)
                assert (await receive(ws))["status"] == "processing"
                await send(ws, {"action": "cancel", "request_id": cancelled["request_id"]})
                ended = await receive(ws)
                assert (ended["request_id"], ended["status"]) == (cancelled["request_id"],
                                                                  "error")
                following = await chat(ws, "the next turn")
                assert _statuses(following)[0] == "processing"
                assert following[-1]["status"] == "complete"
    finally:
        simulator.configure(faults={"latency": 0.0})


async def test_client_disconnect_stops_the_upstream_stream(
    server: ServerChild, simulator: SimulatorChild, slow_stream: None
) -> None:
    aborted = simulator.stats()["streams"]["aborted_by_client"]
    ws = await connect(server.ws_url)
    await send(ws, chat_frame(LONG_TEXT))
    assert (await receive(ws))["status"] == "processing"
    assert (await receive(ws))["status"] == "chunk"
    await ws.close()
    await _until_aborted(simulator, aborted + 1)
    assert simulator.stats()["streams"]["open"] == 0


async def test_concurrent_turns_beyond_the_limit_are_refused(
    server: ServerChild, slow_stream: None
) -> None:
    async with await connect(server.ws_url) as ws:
        frames = [chat_frame(LONG_TEXT) for _ in range(CONCURRENT_TURNS + 1)]
        for frame in frames:
            await send(ws, frame)
        refused = frames[-1]["request_id"]
        envelopes = await until_end(ws, refused, timeout=5)
        assert envelopes == [{
            "request_id": refused,
            "status": "error",
            "chunk": {"error": f"at most {CONCURRENT_TURNS} requests may run at once on one"
                      " connection", "error_type": "too_many_requests"},
        }]
        for frame in frames[:-1]:
            await send(ws, {"action": "cancel", "request_id": frame["request_id"]})
            assert (await until_end(ws, frame["request_id"]))[-1]["status"] == "error"


async def test_conversation_resumes_on_a_new_socket_and_clear_history_forgets_it(
    server: ServerChild,
) -> None:
    async with await connect(server.ws_url) as ws:
        fresh = await chat(ws, "the same question")
    conversation = fresh[0]["chunk"]["metadata"]["conversation_id"]
    fresh_prompt = fresh[-1]["chunk"]["usage"]["prompt_tokens"]

    async with await connect(server.ws_url) as ws:
        resumed = await chat(ws, "the same question", conversation_id=conversation)
        assert resumed[0]["chunk"]["metadata"]["conversation_id"] == conversation
        # The history came along: the model saw the earlier turn too.
        assert resumed[-1]["chunk"]["usage"]["prompt_tokens"] > fresh_prompt

        await send(ws, {"action": "clear_history", "request_id": "clear-1"})
        assert await receive(ws) == {
            "request_id": "clear-1",
            "status": "complete",
            "chunk": {"type": "history_cleared", "conversation_id": conversation},
        }
        cleared = await chat(ws, "the same question")
        assert cleared[-1]["chunk"]["usage"]["prompt_tokens"] == fresh_prompt

    async with await connect(server.ws_url) as ws:
        other = await chat(ws, "the same question")
    assert other[0]["chunk"]["metadata"]["conversation_id"] != conversation


async def test_a_clear_history_whose_delete_fails_gets_an_error_and_the_socket_stays(
    server: ServerChild, workdir: Path
) -> None:
    async with await connect(server.ws_url) as ws:
        first = await chat(ws, "remember this")
        conversation = first[0]["chunk"]["metadata"]["conversation_id"]
        # The database refuses to delete this conversation's messages, as a failing disk would.
        db = sqlite3.connect(workdir / "history.sqlite3", isolation_level=None)
        db.execute(f"CREATE TRIGGER failing_clear BEFORE DELETE ON messages"
                   f" WHEN old.conversation_id = '{conversation}'"
                   f" BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        try:
            await send(ws, {"action": "clear_history", "request_id": "clear-fails"})
            assert await receive(ws) == {
                "request_id": "clear-fails",
                "status": "error",
                "chunk": {"error": "the conversation's history could not be cleared",
                          "error_type": "history_unavailable"},
            }
            assert (await chat(ws, "still serving"))[-1]["status"] == "complete"
        finally:
            db.execute("DROP TRIGGER failing_clear")
            db.close()
        await send(ws, {"action": "clear_history", "request_id": "clear-works"})
        assert await receive(ws) == {
            "request_id": "clear-works",
            "status": "complete",
            "chunk": {"type": "history_cleared", "conversation_id": conversation},
        }


async def test_pipelined_turns_and_clear_of_one_conversation_run_in_the_order_sent(
    server: ServerChild,
) -> None:
    async with await connect(server.ws_url) as ws:
        first = chat_frame("first " * 50)
        await send(ws, first)
        conversation = (await receive(ws))["chunk"]["metadata"]["conversation_id"]
        second = chat_frame("second", conversation_id=conversation)
        await send(ws, second)
        await send(ws, {"action": "clear_history", "request_id": "clear-2"})
        endings: list[dict[str, Any]] = []
        with anyio.fail_after(20):
            while len(endings) < 3:
                envelope = await receive(ws)
                if envelope["status"] in ("complete", "error"):
                    endings.append(envelope)
        third = await chat(ws, "second", conversation_id=conversation)
    assert [e["request_id"] for e in endings] == [
        first["request_id"], second["request_id"], "clear-2"
    ]
    assert endings[2]["chunk"]["type"] == "history_cleared"
    prompts = [e["chunk"]["usage"]["prompt_tokens"] for e in (*endings[:2], third[-1])]
    # The second turn saw the long first one; the third came after the clear and saw neither.
    assert prompts[1] > prompts[0] > prompts[2]


# -- bad input ----------------------------------------------------------------------------------


async def test_malformed_and_unknown_frames_get_errors_and_the_socket_stays_open(
    server: ServerChild,
) -> None:
    async with await connect(server.ws_url) as ws:
        await send(ws, "{not json")
        invalid = await receive(ws)
        assert invalid["status"] == "error"
        assert invalid["request_id"] is None
        assert invalid["chunk"]["error_type"] == "invalid_json"

        await send(ws, {"action": "teleport", "request_id": "t1"})
        assert await receive(ws) == {
            "request_id": "t1",
            "status": "error",
            "chunk": {"error": "unknown action 'teleport'; expected one of chat, cancel,"
                      " clear_history", "error_type": "unknown_action"},
        }

        await send(ws, {"action": "chat", "request_id": "m1", "payload": {"streaming": True}})
        assert await receive(ws) == {
            "request_id": "m1",
            "status": "error",
            "chunk": {"error": "invalid frame: payload.text: required",
                      "error_type": "invalid_request"},
        }
        await ws.send(b"\x00\x01")
        assert (await receive(ws))["chunk"]["error_type"] == "invalid_request"

        assert (await chat(ws, "after the errors"))[-1]["status"] == "complete"


async def test_oversized_frame_closes_with_1009(server: ServerChild) -> None:
    async with await connect(server.ws_url) as ws:
        await send(ws, json.dumps(chat_frame("x" * (MAX_MESSAGE_BYTES + 1))))
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws, timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_messages_above_the_rate_limit_get_rate_limited_errors(server: ServerChild) -> None:
    async with await connect(server.ws_url) as ws:
        for i in range(MESSAGES_PER_MINUTE):
            await send(ws, {"action": "ping", "request_id": f"ping-{i}"})
            assert (await receive(ws))["chunk"]["error_type"] == "unknown_action"
        frame = chat_frame("one too many")
        await send(ws, frame)
        assert await receive(ws) == {
            "request_id": frame["request_id"],
            "status": "error",
            "chunk": {"error": f"more than {MESSAGES_PER_MINUTE} messages in a minute",
                      "error_type": "rate_limited"},
        }


async def _until_ended(ws: Any, *request_ids: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Every envelope received until each of ``request_ids`` has had a final one."""
    envelopes: list[dict[str, Any]] = []
    pending = set(request_ids)
    with anyio.fail_after(timeout):
        while pending:
            envelopes.append(await receive(ws, timeout))
            if envelopes[-1]["status"] in ("complete", "error"):
                pending.discard(envelopes[-1]["request_id"])
    return envelopes


def _finals(envelopes: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [e for e in envelopes
            if e["request_id"] == request_id and e["status"] in ("complete", "error")]


CANCELLED = {"status": "error",
             "chunk": {"error": "the request was cancelled", "error_type": "cancelled"}}


async def test_a_cancel_over_the_rate_limit_still_cancels_and_the_turn_ends_once(
    server: ServerChild, slow_stream: None
) -> None:
    async with await connect(server.ws_url) as ws:
        await send(ws, chat_frame(LONG_TEXT, request_id="long"))
        assert (await receive(ws))["status"] == "processing"
        for _ in range(MESSAGES_PER_MINUTE - 1):  # the chat frame was the first of the minute
            await send(ws, {"action": "ping"})
        await send(ws, {"action": "cancel", "request_id": "long"})
        await send(ws, {"action": "ping", "request_id": "marker"})
        envelopes = await _until_ended(ws, "long", "marker")
        await send(ws, {"action": "ping", "request_id": "marker-2"})  # after a late ending
        envelopes += await _until_ended(ws, "marker-2")
    assert _finals(envelopes, "long") == [{"request_id": "long", **CANCELLED}]
    assert _finals(envelopes, "marker") == [{
        "request_id": "marker", "status": "error",
        "chunk": {"error": f"more than {MESSAGES_PER_MINUTE} messages in a minute",
                  "error_type": "rate_limited"},
    }]
    assert [e["chunk"]["error_type"] for e in envelopes if e["request_id"] is None] == [
        "unknown_action"] * (MESSAGES_PER_MINUTE - 1)


async def test_cancels_of_nothing_running_count_and_frames_over_the_limit_skip_validation(
    server: ServerChild,
) -> None:
    # A cancel of no running turn is silent but counted (a flood of them is a flood of frames,
    # each parsed); past the budget it is refused like any frame. A frame over the budget is
    # refused before its validation: rate_limited, not invalid_request.
    rate_limited = {"error": f"more than {MESSAGES_PER_MINUTE} messages in a minute",
                    "error_type": "rate_limited"}
    async with await connect(server.ws_url) as ws:
        for index in range(MESSAGES_PER_MINUTE):
            await send(ws, {"action": "cancel", "request_id": f"nothing-{index}"})
        await send(ws, {"action": "cancel", "request_id": "one-too-many"})
        await send(ws, {"action": "chat", "request_id": "invalid", "payload": {}})
        envelopes = await _until_ended(ws, "one-too-many", "invalid")
    assert envelopes == [
        {"request_id": "one-too-many", "status": "error", "chunk": rate_limited},
        {"request_id": "invalid", "status": "error", "chunk": rate_limited},
    ]


async def test_frames_reusing_a_running_request_id_are_refused_without_ending_it(
    server: ServerChild, slow_stream: None
) -> None:
    async with await connect(server.ws_url) as ws:
        await send(ws, chat_frame(LONG_TEXT, request_id="dup"))
        assert (await receive(ws))["status"] == "processing"
        await send(ws, chat_frame("again", request_id="dup"))
        await send(ws, {"action": "clear_history", "request_id": "dup"})
        await send(ws, {"action": "chat", "request_id": "dup", "payload": {"streaming": True}})
        await send(ws, {"action": "cancel", "request_id": "dup"})
        envelopes = await _until_ended(ws, "dup")
        await send(ws, {"action": "ping", "request_id": "marker"})  # after a late ending
        envelopes += await _until_ended(ws, "marker")
    duplicate = {"request_id": None, "status": "error",
                 "chunk": {"error": "a request with this request_id is still running",
                           "error_type": "duplicate_request", "refused_request_id": "dup"}}
    assert [e for e in envelopes if e["request_id"] is None] == [
        duplicate,
        duplicate,
        {"request_id": None, "status": "error",
         "chunk": {"error": "invalid frame: payload.text: required",
                   "error_type": "invalid_request", "refused_request_id": "dup"}},
    ]
    assert _finals(envelopes, "dup") == [{"request_id": "dup", **CANCELLED}]


# -- HTTP ---------------------------------------------------------------------------------------


async def test_health_reports_providers_and_mcp_servers(server: ServerChild) -> None:
    health = server.health()
    assert health["status"] == "ok", health
    assert health["simulated"] is False
    assert health["auth_required"] is False
    assert health["providers"]["sim"]["state"] == "running"
    assert health["providers"]["sim"]["breaker"] == "closed"
    assert health["mcp_servers"]["demo"]["state"] == "ready"
    assert "add" in health["mcp_servers"]["demo"]["tools"]
    assert health["mcp_servers"]["time"]["state"] == "ready"


async def test_metrics_are_prometheus_text_with_server_metrics(server: ServerChild) -> None:
    async with await connect(server.ws_url) as ws:
        await chat(ws, "count me")
        status, content_type, body = http_get(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "mcp_backend_websockets_open 1.0" in body
    assert 'mcp_backend_turns_total{outcome="complete"}' in body


async def test_index_serves_the_chat_page(server: ServerChild) -> None:
    status, content_type, body = http_get(server.url + "/")
    assert status == 200
    assert content_type.startswith("text/html")
    assert 'id="messages"' in body


async def _until_aborted(simulator: SimulatorChild, at_least: int) -> None:
    """Until the simulator has seen ``at_least`` streams closed by their client (at most 5 s)."""
    with anyio.fail_after(5):
        # Polling another process's counter: there is no event to wait on.
        while simulator.stats()["streams"]["aborted_by_client"] < at_least:
            await anyio.sleep(0.05)


