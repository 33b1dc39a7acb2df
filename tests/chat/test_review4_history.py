"""Review 4: a live conversation's history is bounded in bytes, and a turn that fails before its
model answered anything leaves the conversation as it was (memory and SQLite).

The LLM side is the scripted model of ``test_session`` (a double of the router), the real router,
ledger and simulator where money decides, and a real redis-server for the leases.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import (
    HistoryStore,
    RunTurn,
    SharedTurnLeases,
    TurnComplete,
    TurnText,
    session_actor_name,
    session_child_spec,
)
from actors.cluster import ClusterConfig, ConversationLeases, RedisLink
from actors.llm import (
    ChatRequest,
    CostConfig,
    LLMConfig,
    LLMCostLimitError,
    LLMServerError,
    LLMStreamingError,
    ModelPrice,
    TextDelta,
    open_runtime,
)
from actors.mcp import ToolCatalog
from runtime import Actor, ActorRef, ActorSystem, ChildSpec, SupervisorSpec
from server.config import ChatConfig
from server.simulated import simulated_llm_config
from simulator.process import SimulatorProcess
from tests.chat.test_session import ScriptedModel, backend, text_of, turn
from tests.redis_server import RedisServer

# -- what the model is sent: the history kept in memory -----------------------------------------


def _flat_bytes(message: dict[str, Any]) -> int:
    """Python's size of a message of plain strings (how ``chat.max_history_bytes`` counts)."""
    return sys.getsizeof(message) + sum(sys.getsizeof(value) for value in message.values())


def _seen(model: ScriptedModel) -> list[str]:
    """What the model's last request carried after the system prompt: role and first word."""
    return [f"{m['role']}:{str(m['content']).split(' ')[0]}"
            for m in model.requests[-1].messages[1:]]


def _text(label: str, chars: int, widest: str = "a") -> str:
    return f"{label} " + widest + "a" * (chars - len(label) - 2)


async def test_a_live_history_keeps_the_newest_turns_within_max_history_bytes(
    tmp_path: Path,
) -> None:
    # Before: only max_history_messages (200) bounded it, 200 x up to 64 KiB frames (measured:
    # 49.9 MiB for one conversation of 64 KiB frames holding one emoji each).
    user = {"role": "user", "content": _text("t1", 3000)}
    answer = {"role": "assistant", "content": "Echo: " + _text("t1", 3000)}
    two_turns = 2 * (_flat_bytes(user) + _flat_bytes(answer))
    async with backend(tmp_path, servers={}) as b:
        session = await b.session(max_history_bytes=two_turns + 200)
        for number in range(1, 6):
            await turn(session, _text(f"t{number}", 3000), request_id=f"r{number}")
        await turn(session, "next")
        assert _seen(b.model) == ["user:t4", "assistant:Echo:", "user:t5", "assistant:Echo:",
                                  "user:next"]
        # The store keeps everything (its own bound is max_stored_messages).
        assert len(b.history.load("c1")) == 12
        # A new actor reads the store back within the same bound.
        await b.system.stop_actor(session_actor_name("c1"), under="sessions")
        again = await b.session(max_history_bytes=two_turns + 200)
        await turn(again, "later")
        assert _seen(b.model) == ["assistant:Echo:", "user:t5", "assistant:Echo:", "user:next",
                                  "assistant:Echo:", "user:later"]


async def test_one_wide_character_makes_a_text_count_four_bytes_a_character(
    tmp_path: Path,
) -> None:
    # Python stores a string at the width of its widest character: a 3000-character text with
    # one emoji takes 12 KB, which is what the bound is about (memory), not its UTF-8 length.
    user = {"role": "user", "content": _text("t1", 3000)}
    answer = {"role": "assistant", "content": "Echo: " + _text("t1", 3000)}
    two_turns = 2 * (_flat_bytes(user) + _flat_bytes(answer))
    async with backend(tmp_path, servers={}) as b:
        session = await b.session(max_history_bytes=two_turns + 200)
        for number in range(1, 4):
            await turn(session, _text(f"t{number}", 3000, widest="\U0001F600"),
                       request_id=f"r{number}")
        await turn(session, "next")
    assert _seen(b.model) == ["assistant:Echo:", "user:next"]


async def test_a_tool_step_over_the_bound_is_dropped_whole_never_split(tmp_path: Path) -> None:
    # The step (the assistant's tool call and its 6000-character result) holds more than the
    # bound; the answer after it fits. The history must never start with the tool result alone.
    async with backend(tmp_path) as b:
        session = await b.session(max_history_bytes=10_000)
        long = "b" * 6000
        events = await turn(session, f'call echo {{"text": "{long}"}}')
        assert text_of(events) == f"Tool echo returned: {long}"
        await turn(session, "next")
    assert [m["role"] for m in b.model.requests[-1].messages[1:]] == ["assistant", "user"]
    assert b.model.requests[-1].messages[-2]["content"] == f"Tool echo returned: {long}"


def test_max_history_bytes_is_validated() -> None:
    assert ChatConfig().max_history_bytes == 512 * 1024
    with pytest.raises(ValueError, match="max_history_bytes"):
        ChatConfig(max_history_bytes=100)


# -- a turn refused before its model answered anything ------------------------------------------


async def test_a_turn_refused_at_the_cost_limit_leaves_the_conversation_as_it_was(
    tmp_path: Path,
) -> None:
    # Input tokens at $1000 per million and a turn limit of $1: a 2000-word message is refused by
    # the ledger before anything is sent. Before, it stayed in the history, so every later turn
    # carried it (and was refused in turn, or paid for it).
    cost = CostConfig(db_path=str(tmp_path / "ledger.sqlite3"), daily_cost_limit=100.0)
    async with SimulatorProcess() as sim:
        llm = simulated_llm_config(LLMConfig(cost=cost), sim.url)
        provider = llm.providers["simulator"].model_copy(
            update={"prices": {"gpt-4o-mini": ModelPrice(input=1000.0, output=0.0)}})
        llm = llm.model_copy(update={"providers": {"simulator": provider}})
        sessions = SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0)
        with HistoryStore(tmp_path / "history.sqlite3") as history:
            async with open_runtime(llm, extra_children=[sessions]) as runtime:
                session = await runtime.system.spawn(session_child_spec(
                    "money", router=runtime.router, tools=ToolCatalog(runtime.system, []),
                    history=history, chat=ChatConfig(max_cost_per_turn=1.0)), under="sessions")
                with pytest.raises(LLMCostLimitError):
                    await turn(session, " ".join(["expensive"] * 2000), request_id="refused")
                assert history.load("money") == []
                assert not history.exists("money")
                events = await turn(session, "thanks", request_id="next")
                assert history.load("money") == [
                    {"role": "user", "content": "thanks"},
                    {"role": "assistant", "content": text_of(events)},
                ]
    complete = events[-1]
    assert isinstance(complete, TurnComplete)
    assert text_of(events).startswith("Echo: thanks")
    assert complete.usage.prompt_tokens < 100


async def test_a_model_error_before_any_answer_stores_nothing(tmp_path: Path) -> None:
    async with backend(tmp_path, servers={}) as b:
        session = await b.session()
        await turn(session, "hello")
        with pytest.raises(LLMServerError):
            await turn(session, "explode", request_id="r2")
        assert [m["content"] for m in b.history.load("c1")] == ["hello", "Echo: hello"]
        await turn(session, "again", request_id="r3")
    assert _seen(b.model) == ["user:hello", "assistant:Echo:", "user:again"]


class _HalfAnswer(Actor[ChatRequest]):
    """The LLM double of a stream that fails midway: ``Half`` as a delta (``via_sink``: to the
    caller's own sink, as the router does, which then says so in the error's ``partial_text``)
    then an :class:`LLMStreamingError`."""

    def error(self) -> Exception:
        return LLMStreamingError("the stream broke", partial_text="Half", provider="double")

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def receive(self, message: ChatRequest) -> None:
        self.requests.append(message)
        request = self.context.request
        assert request is not None
        if message.deltas is not None:
            await message.deltas(TextDelta("Half"))
        else:
            await request.send(TextDelta("Half"))
        raise self.error()


class _HalfAnswerThenAnotherError(_HalfAnswer):
    """``Half`` reached the caller, then the router failed with an error that carries no
    partial text (say, recording what the call cost)."""

    def error(self) -> Exception:
        return LLMServerError("recording the call failed", provider="double")


@pytest.mark.parametrize(("router", "via_sink"), [
    (_HalfAnswer, False), (_HalfAnswer, True), (_HalfAnswerThenAnotherError, True)])
async def test_a_failure_after_part_of_the_answer_keeps_the_user_message(
    tmp_path: Path, router: type[_HalfAnswer], via_sink: bool,
) -> None:
    root = SupervisorSpec("root", [
        ChildSpec("router", router, crash_on=()),
        SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0),
    ])
    delivered: list[str] = []

    async def sink(delta: Any) -> None:
        delivered.append(delta.text)

    with HistoryStore(tmp_path / "history.sqlite3") as history:
        async with ActorSystem(root) as system:
            session = await system.spawn(session_child_spec(
                "c1", router=system.ref("router"), tools=ToolCatalog(system, []),
                history=history, chat=ChatConfig()), under="sessions")
            events: list[Any] = []
            with anyio.fail_after(10), pytest.raises((LLMStreamingError, LLMServerError)):
                message = RunTurn("tell me", "r1", deltas=sink if via_sink else None)
                async with session.ask_stream(message) as items:
                    async for event in items:
                        events.append(event)
            stored = history.load("c1")
    assert (delivered, events) == ((["Half"], []) if via_sink else ([], [TurnText("Half")]))
    assert stored == [{"role": "user", "content": "tell me"}]


# -- with leases (several workers): the message written at the start is taken back -------------


@asynccontextmanager
async def _leased_worker(db: Path, redis: RedisServer) -> AsyncIterator[tuple[ActorRef,
                                                                              ScriptedModel,
                                                                              HistoryStore]]:
    model = ScriptedModel()
    root = SupervisorSpec("root", [
        ChildSpec("router", lambda: model),
        SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0),
    ])
    config = ClusterConfig(redis_url=redis.url, key_prefix="test", journal_interval=0.1)
    async with RedisLink(config) as link:
        leases = SharedTurnLeases(ConversationLeases(link, "a"), timeout=5.0)
        with HistoryStore(db) as history:
            async with ActorSystem(root) as system:
                session = await system.spawn(session_child_spec(
                    "c1", router=system.ref("router"), tools=ToolCatalog(system, []),
                    history=history, chat=ChatConfig(), leases=leases), under="sessions")
                yield session, model, history


async def test_with_leases_a_turn_failed_before_any_answer_takes_its_message_back(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    async with _leased_worker(tmp_path / "history.sqlite3", redis_server) as (
            session, model, history):
        with pytest.raises(LLMServerError):
            await turn(session, "explode first")
        assert history.load("c1") == []
        assert not history.exists("c1")
        await turn(session, "hello", request_id="r2")
        with pytest.raises(LLMServerError):
            await turn(session, "explode", request_id="r3")
        assert [m["content"] for m in history.load("c1")] == ["hello", "Echo: hello"]
        await turn(session, "again", request_id="r4")
    assert [m["content"] for m in model.requests[-1].messages[1:]] == [
        "hello", "Echo: hello", "again"]
