"""End to end: conversation ids are issued by the server, bound to a credential, and bounded."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from server.conversations import ConversationOwners, ConversationStoreUnavailable
from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat,
    chat_frame,
    connect,
    http_get,
    receive,
    send,
    until_end,
    write_config,
)

TOKEN = "conv-token-9d2c4e7b10"


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorChild]:
    child = SimulatorChild(directory=tmp_path_factory.mktemp("conversations-sim"))
    yield child
    child.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorChild
) -> Iterator[ServerChild]:
    directory = tmp_path_factory.mktemp("conversations")
    config = write_config(directory, simulator_url=simulator.url, mcp_servers={},
                          server={"max_conversations": 3, "max_conversations_per_socket": 2})
    child = ServerChild(config, env={"MCP_BACKEND_TOKEN": TOKEN})
    yield child
    assert child.stop() == 0, child.output


async def _new_conversation(server: ServerChild) -> str:
    async with await connect(server.ws_url, token=TOKEN) as ws:
        envelopes = await chat(ws, "hello")
    assert envelopes[-1]["status"] == "complete"
    conversation: str = envelopes[0]["chunk"]["metadata"]["conversation_id"]
    return conversation


def _error(request_id: str | None, message: str, error_type: str) -> dict[str, object]:
    return {"request_id": request_id, "status": "error",
            "chunk": {"error": message, "error_type": error_type}}


UNKNOWN = ("no conversation with this id for this client (conversation ids are issued by the"
           " server)")


async def test_conversation_ids_are_issued_by_the_server_and_unguessable(
    server: ServerChild,
) -> None:
    first, second = await _new_conversation(server), await _new_conversation(server)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert re.fullmatch(r"[0-9a-f]{32}", second)
    assert first != second


async def test_an_id_the_server_did_not_issue_is_unknown(server: ServerChild) -> None:
    async with await connect(server.ws_url, token=TOKEN) as ws:
        await send(ws, chat_frame("hi", request_id="r1", conversation_id="default"))
        assert await receive(ws) == _error("r1", UNKNOWN, "unknown_conversation")
        await send(ws, {"action": "clear_history", "request_id": "c1",
                        "conversation_id": "default"})
        assert await receive(ws) == _error("c1", UNKNOWN, "unknown_conversation")
        assert (await chat(ws, "still serving"))[-1]["status"] == "complete"


async def test_a_socket_switching_conversations_releases_the_previous_one(
    server: ServerChild,
) -> None:
    conversations = [await _new_conversation(server) for _ in range(3)]
    async with await connect(server.ws_url, token=TOKEN) as ws:
        # Three conversations in turn on a socket allowed two at once: each switch released.
        for conversation in [*conversations, conversations[0]]:
            envelopes = await chat(ws, "switch", conversation_id=conversation)
            assert envelopes[-1]["status"] == "complete"
            assert envelopes[-1]["chunk"]["conversation_id"] == conversation
    assert server.health(TOKEN)["connections"]["conversations"] <= 3


async def test_a_socket_cannot_hold_more_conversations_than_its_cap(
    server: ServerChild, simulator: SimulatorChild
) -> None:
    first, second, third = [await _new_conversation(server) for _ in range(3)]
    simulator.configure(faults={"first_byte_delay": 30.0})
    try:
        async with await connect(server.ws_url, token=TOKEN) as ws:
            # A running turn keeps its conversation held after the socket switched away.
            for request_id, conversation in (("slow1", first), ("slow2", second)):
                await send(ws, chat_frame("slow", request_id=request_id,
                                          conversation_id=conversation))
                assert (await receive(ws))["status"] == "processing"
            await send(ws, chat_frame("a third", request_id="r3", conversation_id=third))
            assert await receive(ws) == _error(
                "r3", "at most 2 conversations may be in use on one connection",
                "too_many_conversations")
            for request_id in ("slow1", "slow2"):
                await send(ws, {"action": "cancel", "request_id": request_id})
                assert (await until_end(ws, request_id))[-1]["chunk"]["error_type"] == (
                    "cancelled")
            simulator.configure(faults={"first_byte_delay": 0.0})
            envelopes = await chat(ws, "a third", conversation_id=third)
            assert envelopes[-1]["status"] == "complete"
    finally:
        simulator.configure(faults={"first_byte_delay": 0.0})


async def test_conversations_in_use_are_capped_in_total_and_idle_ones_make_room(
    server: ServerChild, simulator: SimulatorChild
) -> None:
    sockets = [await connect(server.ws_url, token=TOKEN) for _ in range(3)]
    simulator.configure(faults={"first_byte_delay": 30.0})
    try:
        for n, ws in enumerate(sockets):  # three live conversations, each with a turn running
            await send(ws, chat_frame("holding", request_id=f"slow{n}"))
            assert (await receive(ws))["status"] == "processing"
        async with await connect(server.ws_url, token=TOKEN) as late:
            await send(late, chat_frame("a fourth", request_id="r4"))
            assert await receive(late) == _error(
                "r4", "all 3 conversations are in use; try again later",
                "too_many_conversations")
            await send(sockets[0], {"action": "cancel", "request_id": "slow0"})
            assert (await until_end(sockets[0], "slow0"))[-1]["chunk"]["error_type"] == (
                "cancelled")
            simulator.configure(faults={"first_byte_delay": 0.0})
            # The cancelled turn's conversation is idle, its socket still on it: it makes room.
            envelopes = await chat(late, "a fourth")
            assert envelopes[-1]["status"] == "complete"
        assert server.health(TOKEN)["connections"]["conversations"] == 3
    finally:
        simulator.configure(faults={"first_byte_delay": 0.0})
        for n, ws in enumerate(sockets[1:], start=1):
            await send(ws, {"action": "cancel", "request_id": f"slow{n}"})
            await until_end(ws, f"slow{n}")
            await ws.close()
        await sockets[0].close()


async def test_sockets_left_open_on_their_conversations_never_keep_a_new_one_out(
    server: ServerChild,
) -> None:
    sockets = [await connect(server.ws_url, token=TOKEN) for _ in range(3)]
    try:
        first = []
        for ws in sockets:  # three conversations, their sockets left open (idle tabs)
            envelopes = await chat(ws, "holding")
            first.append(envelopes[-1]["chunk"]["conversation_id"])
        async with await connect(server.ws_url, token=TOKEN) as late:
            envelopes = await chat(late, "a fourth")
            assert envelopes[-1]["status"] == "complete"
            assert envelopes[-1]["chunk"]["conversation_id"] not in first
        # Each idle socket's next turn is still on its own conversation (restarted if evicted).
        for ws, conversation in zip(sockets, first, strict=True):
            envelopes = await chat(ws, "back")
            assert envelopes[-1]["status"] == "complete"
            assert envelopes[-1]["chunk"]["conversation_id"] == conversation
        assert server.health(TOKEN)["connections"]["conversations"] == 3
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_conversation_is_bound_to_the_credential_that_created_it(
    tmp_path: Path, simulator: SimulatorChild
) -> None:
    config = write_config(tmp_path, simulator_url=simulator.url, mcp_servers={})

    async def resume(token: str, conversation: str) -> dict[str, object]:
        server = ServerChild(config, env={"MCP_BACKEND_TOKEN": token})
        try:
            async with await connect(server.ws_url, token=token) as ws:
                return (await chat(ws, "again", request_id="again",
                                   conversation_id=conversation))[-1]
        finally:
            assert server.stop() == 0, server.output

    first = ServerChild(config, env={"MCP_BACKEND_TOKEN": "token-a-1f2e3d"})
    try:
        conversation = await _new_conversation_with(first, "token-a-1f2e3d")
    finally:
        assert first.stop() == 0, first.output
    assert await resume("token-b-4c5b6a", conversation) == _error(
        "again", UNKNOWN, "unknown_conversation")
    assert (await resume("token-a-1f2e3d", conversation))["status"] == "complete"


async def _new_conversation_with(server: ServerChild, token: str) -> str:
    async with await connect(server.ws_url, token=token) as ws:
        envelopes = await chat(ws, "hello")
    conversation: str = envelopes[0]["chunk"]["metadata"]["conversation_id"]
    return conversation


UNAVAILABLE = "the conversation store is not available right now; try again shortly"


def test_owners_in_a_locked_database_are_unavailable_after_a_short_wait(tmp_path: Path) -> None:
    owners = ConversationOwners(tmp_path / "history.sqlite3")
    issued = owners.create("owner-a")
    lock = sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None, timeout=1)
    try:
        lock.execute("BEGIN IMMEDIATE")  # another process's long write
        started = time.monotonic()
        with pytest.raises(ConversationStoreUnavailable, match=rf"^{UNAVAILABLE}$"):
            owners.create("owner-a")
        waited = time.monotonic() - started
        assert owners.owned_by(issued, "owner-a") is True  # WAL: reads do not wait for the lock
        lock.execute("ROLLBACK")
        assert owners.owned_by(owners.create("owner-a"), "owner-a") is True
    finally:
        lock.close()
        owners.close()
    assert waited < 2.0


async def test_a_locked_history_database_neither_freezes_the_server_nor_drops_the_socket(
    tmp_path: Path, simulator: SimulatorChild
) -> None:
    server = ServerChild(write_config(tmp_path, simulator_url=simulator.url, mcp_servers={}))
    lock = sqlite3.connect(tmp_path / "history.sqlite3", isolation_level=None, timeout=1)
    health_seconds: list[float] = []

    async def health() -> None:
        await anyio.sleep(0.1)  # while the new conversation's owner is being written
        started = time.monotonic()
        status, _, _ = await anyio.to_thread.run_sync(http_get, server.url + "/health")
        health_seconds.append(time.monotonic() - started)
        assert status == 200

    try:
        async with await connect(server.ws_url) as ws:
            lock.execute("BEGIN IMMEDIATE")  # a backup, another worker's long write
            try:
                started = time.monotonic()
                async with anyio.create_task_group() as group:
                    group.start_soon(health)
                    await send(ws, chat_frame("hello", request_id="r1"))
                    assert await receive(ws) == _error("r1", UNAVAILABLE, "unavailable")
                answered = time.monotonic() - started
            finally:
                lock.execute("ROLLBACK")
            assert (await chat(ws, "the lock is gone"))[-1]["status"] == "complete"
    finally:
        lock.close()
        assert server.stop() == 0, server.output
    assert answered < 2.0
    assert health_seconds[0] < 2.0
