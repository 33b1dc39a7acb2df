"""Two workers' sessions of one conversation on one redis-server and one SQLite history.

Each worker is an ActorSystem of its own with a :class:`SessionActor` for the conversation, its
own :class:`SharedTurnLeases` and its own connection to the history database: what one writes
(or clears) reaches the other's model only if the leases make it read the store again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from actors.chat import (
    ClearHistory,
    HistoryStore,
    HistoryWriteError,
    SharedTurnLeases,
    session_child_spec,
)
from actors.cluster import ConversationLeases, RedisLink
from actors.mcp import ToolCatalog
from runtime import ActorRef, ActorSystem, ChildSpec, SupervisorSpec
from server.config import ChatConfig
from tests.chat.test_session import ScriptedModel, turn
from tests.redis_server import RedisServer


@dataclass
class Worker:
    system: ActorSystem
    model: ScriptedModel
    history: HistoryStore
    leases: SharedTurnLeases

    async def session(self, conversation_id: str = "c1") -> ActorRef:
        return await self.system.spawn(session_child_spec(
            conversation_id, router=self.system.ref("router"),
            tools=ToolCatalog(self.system, []), history=self.history, chat=ChatConfig(),
            leases=self.leases), under="sessions")

    def users_seen(self) -> list[str]:
        """The user messages of the last request this worker's model received."""
        return [m["content"] for m in self.model.requests[-1].messages if m["role"] == "user"]


@asynccontextmanager
async def worker(db: Path, link: RedisLink, owner: str) -> AsyncIterator[Worker]:
    model = ScriptedModel()
    root = SupervisorSpec("root", [
        ChildSpec("router", lambda: model),
        SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0),
    ])
    leases = SharedTurnLeases(ConversationLeases(link, owner), timeout=5.0)
    with HistoryStore(db) as history:
        async with ActorSystem(root) as system:
            yield Worker(system, model, history, leases)


async def test_a_clear_on_one_worker_is_seen_by_the_next_turn_on_another(
    tmp_path: Path, link: RedisLink,
) -> None:
    db = tmp_path / "history.sqlite3"
    async with worker(db, link, "a") as a, worker(db, link, "b") as b:
        session_a, session_b = await a.session(), await b.session()
        await turn(session_a, "secret")
        await turn(session_b, "two")
        assert b.users_seen() == ["secret", "two"]
        with anyio.fail_after(5):
            assert await session_a.ask(ClearHistory(), timeout=5) is None
        assert a.history.load("c1") == []
        await turn(session_b, "three")
        assert b.users_seen() == ["three"]
        await turn(session_a, "four")
        assert a.users_seen() == ["three", "four"]


async def test_a_clear_that_fails_after_another_workers_turn_leaves_nothing_stale(
    tmp_path: Path, link: RedisLink,
) -> None:
    # a's clear takes the lease after b's turn (a's memory is stale) and its delete fails: the
    # clear ignores staleness (it was to empty the history), so the token it was granted must not
    # count as read: a's next turn reads the history again and sees b's turn.
    db = tmp_path / "history.sqlite3"
    async with worker(db, link, "a") as a, worker(db, link, "b") as b:
        session_a, session_b = await a.session(), await b.session()
        await turn(session_a, "one")
        await turn(session_b, "two")
        refuse = sqlite3.connect(db, isolation_level=None)
        refuse.execute("CREATE TRIGGER refuse_clear BEFORE DELETE ON messages"
                       " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        try:
            with anyio.fail_after(5), pytest.raises(HistoryWriteError):
                await session_a.ask(ClearHistory(), timeout=5)
        finally:
            refuse.execute("DROP TRIGGER refuse_clear")
            refuse.close()
        await turn(session_a, "three")
        assert a.users_seen() == ["one", "two", "three"]


async def test_after_redis_restarted_empty_a_worker_reads_what_another_wrote_meanwhile(
    tmp_path: Path, link: RedisLink, redis_server: RedisServer,
) -> None:
    # The fencing tokens restart with the data: b's grant is token 1 again, and a's next one,
    # token 2, follows a's own token 1 of before the loss. Only the lease epoch tells them apart.
    db = tmp_path / "history.sqlite3"
    async with worker(db, link, "a") as a, worker(db, link, "b") as b:
        session_a = await a.session()
        await turn(session_a, "one")
        redis_server.stop()
        redis_server.start()
        await turn(await b.session(), "two")
        await turn(session_a, "three")
        assert a.users_seen() == ["one", "two", "three"]
