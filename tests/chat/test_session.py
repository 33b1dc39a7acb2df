"""SessionActor: the tool loop end to end with a scripted model, the demo MCP server and SQLite.

``ScriptedModel`` is a test double of the LLM side (the router), not of the code under test: it
answers a ``ChatRequest`` the way the simulator's scripted model does. ``Echo: <text>``; when tools
are offered and the last message is the user's, one call per ``call <tool> {json}`` in it; after
tool results, ``Tool <name> returned: <content>`` (and, if the user said ``again``, the same calls
once more, to drive the hop limit). ``slowly`` streams one word per 0.2 s; ``explode`` fails;
``think`` streams reasoning first (``reasoning_details`` and 3 reasoning tokens on the answer).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import (
    ClearHistory,
    HistoryStore,
    HistoryWriteError,
    RunTurn,
    ToolCallFinished,
    ToolCallStarted,
    TurnComplete,
    TurnReasoning,
    TurnText,
    session_actor_name,
    session_child_spec,
    trim_history,
)
from actors.chat._messages import conversation_label
from actors.llm import (
    ChatRequest,
    CostConfig,
    LLMConfig,
    LLMResponse,
    LLMServerError,
    ReasoningDelta,
    StreamEnd,
    TextDelta,
    ToolCall,
    Usage,
    open_runtime,
)
from actors.mcp import McpServerConfig, McpServerHealth, ToolCatalog, mcp_supervisor_spec
from runtime import Actor, ActorRef, ActorStopped, ActorSystem, ChildSpec, SupervisorSpec
from server.config import ChatConfig
from server.simulated import simulated_llm_config
from simulator.process import SimulatorProcess

ROOT = Path(__file__).resolve().parents[2]
DEMO = McpServerConfig(
    command=sys.executable, args=["-m", "server.demo_mcp_server"], cwd=str(ROOT), call_timeout=10
)
_DIRECTIVE = re.compile(r"\bcall\s+([A-Za-z0-9_.\-]+)")


class ScriptedModel(Actor):
    """The LLM double (see the module docstring); records requests and cancelled streams."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []
        self.cancelled = 0
        self.calls = 0
        #: Awaited before each answer is planned: what else happens while the model thinks.
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def receive(self, message: Any) -> Any:
        assert isinstance(message, ChatRequest)
        self.requests.append(message)
        request = self.context.request
        assert request is not None
        self.context.pipe(self._stream, message, request, reply_to=request)
        return None

    async def _stream(self, chat: ChatRequest, request: Any) -> None:
        try:
            if self.meanwhile is not None:
                await self.meanwhile()
            response = self._plan(chat)
            delay = 0.2 if "slowly" in _last_user(chat.messages) else 0.0
            if response.reasoning:
                await request.send(ReasoningDelta(response.reasoning))
            for word in re.findall(r"\s*\S+", response.content):
                await anyio.sleep(delay)
                await request.send(TextDelta(word))
            await request.send(StreamEnd(response))
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise

    def _plan(self, chat: ChatRequest) -> LLMResponse:
        messages = chat.messages
        user = _last_user(messages)
        if "explode" in user:
            raise LLMServerError("upstream is on fire", provider="scripted", status_code=500)
        offered = {tool["function"]["name"] for tool in chat.tools}
        last = messages[-1]
        calls = _calls(user, offered, self) if offered else []
        if "think" in user and last["role"] == "user":
            return _response("", calls, thinking=True) if calls else _response(
                f"Echo: {user}", [], thinking=True)
        if last["role"] == "user" and calls:
            return _response("", calls)
        if last["role"] == "tool":
            if "again" in user and calls:
                return _response("", calls)
            names = {
                call["id"]: call["function"]["name"]
                for message in messages
                for call in message.get("tool_calls") or ()
            }
            trailing = []
            for message in reversed(messages):
                if message["role"] != "tool":
                    break
                trailing.append(message)
            text = "\n".join(
                f"Tool {names[m['tool_call_id']]} returned: {m['content']}"
                for m in reversed(trailing)
            )
            return _response(text, [])
        return _response(f"Echo: {user}", [])


def _last_user(messages: Any) -> str:
    return next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")


def _calls(text: str, offered: set[str], model: ScriptedModel) -> list[ToolCall]:
    decoder = json.JSONDecoder()
    calls = []
    for match in _DIRECTIVE.finditer(text):
        if match.group(1) not in offered:
            continue
        rest = text[match.end():].lstrip()
        arguments = decoder.raw_decode(rest)[0] if rest.startswith("{") else {}
        model.calls += 1
        calls.append(ToolCall(id=f"call_{model.calls}", name=match.group(1),
                              arguments=json.dumps(arguments)))
    return calls


def _response(content: str, calls: list[ToolCall], *, thinking: bool = False) -> LLMResponse:
    return LLMResponse(
        content=content,
        tool_calls=calls,
        finish_reason="tool_calls" if calls else "stop",
        usage=Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, total_cost=0.001,
                    reasoning_tokens=3 if thinking else 0),
        model="scripted-1",
        provider="scripted",
        reasoning="Let me think. " if thinking else "",
        reasoning_details=[{"type": "reasoning.text", "text": "Let me think."}] if thinking else [],
    )


@dataclass
class Backend:
    system: ActorSystem
    model: ScriptedModel
    tools: ToolCatalog
    history: HistoryStore

    async def session(self, conversation_id: str = "c1", *, new: bool = False,
                      **chat: Any) -> ActorRef:
        return await self.system.spawn(
            session_child_spec(
                conversation_id,
                router=self.system.ref("router"),
                tools=self.tools,
                history=self.history,
                chat=ChatConfig(**chat),
                new=new,
            ),
            under="sessions",
        )


@asynccontextmanager
async def backend(
    tmp_path: Path, servers: dict[str, McpServerConfig] | None = None
) -> AsyncIterator[Backend]:
    servers = {"demo": DEMO} if servers is None else servers
    model = ScriptedModel()
    root = SupervisorSpec("root", [
        ChildSpec("router", lambda: model),
        mcp_supervisor_spec(servers),
        SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0),
    ])
    with HistoryStore(tmp_path / "history.sqlite3") as history:
        async with ActorSystem(root) as system:
            with anyio.fail_after(15):
                for name in servers:
                    while _health(system, name).state not in ("ready", "failed"):
                        await anyio.sleep(0.02)
            yield Backend(system, model, ToolCatalog(system, list(servers)), history)


def _health(system: ActorSystem, server: str) -> McpServerHealth:
    health = system.durable(f"mcp:{server}")
    assert isinstance(health, McpServerHealth)
    return health


async def turn(
    session: ActorRef, text: str, request_id: str = "r1", **options: Any
) -> list[Any]:
    events: list[Any] = []
    with anyio.fail_after(30):
        async with session.ask_stream(RunTurn(text, request_id, {}, **options)) as items:
            async for event in items:
                events.append(event)
    return events


def text_of(events: list[Any]) -> str:
    return "".join(event.text for event in events if isinstance(event, TurnText))


def of_type(events: list[Any], kind: type[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


# ---------------------------------------------------------------- turns


async def test_a_conversation_issued_just_now_starts_without_reading_the_store(
    tmp_path: Path,
) -> None:
    # ``new`` (the server created the id in this request) skips the start's history read. The
    # store holds rows for both ids here, which a real new conversation never has: only a
    # session that read them can show them to the model.
    async with backend(tmp_path, servers={}) as b:
        for conversation_id in ("issued", "resumed"):
            b.history.append(conversation_id, [{"role": "user", "content": "stored before"},
                                               {"role": "assistant", "content": "ok"}])
        await turn(await b.session("issued", new=True), "hi")
        await turn(await b.session("resumed"), "hi")
    seen = [[m["content"] for m in request.messages if m["role"] == "user"]
            for request in b.model.requests]
    assert seen == [["hi"], ["stored before", "hi"]]


async def test_plain_turn_streams_the_answer_and_completes(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        events = await turn(await b.session(), "hello there")
    assert text_of(events) == "Echo: hello there"
    assert events[-1] == TurnComplete(
        usage=Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, total_cost=0.001),
        cost=0.001, provider="scripted", model="scripted-1", hops=0, finish_reason="stop",
    )
    request = b.model.requests[0]
    assert request.messages == (
        {"role": "system", "content": ChatConfig().system_prompt},
        {"role": "user", "content": "hello there"},
    )
    assert {tool["function"]["name"] for tool in request.tools} >= {"add", "echo", "sleep"}


async def test_tool_call_runs_and_its_result_goes_back_to_the_model(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        events = await turn(await b.session(), 'call add {"a": 2, "b": 3}')
    started, finished, complete = events[0], events[1], events[-1]
    assert started == ToolCallStarted(call_id="call_1", server="demo", tool="add",
                                      arguments={"a": 2, "b": 3})
    assert isinstance(finished, ToolCallFinished)
    assert (finished.call_id, finished.server, finished.tool, finished.is_error,
            finished.result_preview) == ("call_1", "demo", "add", False, "5.0")
    assert 0 < finished.duration_ms < 10_000
    assert text_of(events) == "Tool add returned: 5.0"
    assert isinstance(complete, TurnComplete)
    assert (complete.hops, complete.finish_reason) == (1, "stop")
    assert complete.usage.total_tokens == 30 and complete.cost == pytest.approx(0.002)
    assert b.model.requests[1].messages[-2:] == (
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5.0"},
    )


async def test_a_turn_calls_the_tool_it_offered_even_after_another_turn_renamed_it(
    tmp_path: Path,
) -> None:
    # notes' "read.file" and shell's "read_file" are both read_file once made valid: offered as
    # notes__read_file and shell__read_file. While this turn's model thinks, notes restarts and
    # another conversation's refresh offers shell's alone, as read_file; the model then calls
    # notes__read_file, the name this turn offered. The call must reach notes, never shell.
    hostile = functools.partial(McpServerConfig, command=sys.executable, cwd=str(ROOT),
                                call_timeout=10)
    servers = {"notes": hostile(args=["-m", "tests.mcp.hostile_server", "--pid-tool",
                                      "read.file"]),
               "shell": hostile(args=["-m", "tests.mcp.hostile_server", "--pid-tool",
                                      "read_file"])}
    async with backend(tmp_path, servers) as b:
        shell = _health(b.system, "shell").pid

        async def notes_restart_and_another_turn_refreshes() -> None:
            b.model.meanwhile = None
            pid = _health(b.system, "notes").pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(10):
                while _health(b.system, "notes").state == "ready":
                    await anyio.sleep(0.01)
            later = await b.tools.refresh()
            assert (later.exposed["read_file"].server, "notes__read_file" in later.exposed) == (
                "shell", False)

        b.model.meanwhile = notes_restart_and_another_turn_refreshes
        session = await b.session()
        events = await turn(session, "call notes__read_file")
        finished = of_type(events, ToolCallFinished)
        assert [(f.server, f.tool) for f in finished] == [("notes", "read.file")]
        assert finished[0].result_preview != str(shell)
        assert of_type(events, TurnComplete)


async def test_independent_tool_calls_run_in_parallel(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        started = anyio.current_time()
        events = await turn(session, " ".join(
            f'call sleep {{"seconds": {s}}}' for s in (0.8, 0.6, 0.7)))
        elapsed = anyio.current_time() - started
    assert [e.call_id for e in of_type(events, ToolCallStarted)] == ["call_1", "call_2", "call_3"]
    assert [e.result_preview for e in of_type(events, ToolCallFinished)] == [
        "slept 0.6 s", "slept 0.7 s", "slept 0.8 s",  # in the order they finished
    ]
    assert elapsed < 1.8  # 2.1 s one after the other
    assert text_of(events).splitlines() == [  # results reach the model in the calls' order
        "Tool sleep returned: slept 0.8 s",
        "Tool sleep returned: slept 0.6 s",
        "Tool sleep returned: slept 0.7 s",
    ]


async def test_invalid_arguments_are_fed_back_to_the_model_not_raised(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        events = await turn(await b.session(), 'call add {"a": "two"}')
    (finished,) = of_type(events, ToolCallFinished)
    assert finished.is_error
    expected = (
        "Error: Invalid arguments for tool 'add': the arguments: 'b' is a required property;"
        " 'a' must be of type number, got string."
    )
    assert b.model.requests[1].messages[-1] == {
        "role": "tool", "tool_call_id": "call_1", "content": expected,
    }
    assert text_of(events) == f"Tool add returned: {expected}"
    assert events[-1].finish_reason == "stop"


async def test_a_failing_tool_is_an_error_result_for_the_model(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        events = await turn(await b.session(), 'call fail {"message": "disk on fire"}')
    (finished,) = of_type(events, ToolCallFinished)
    assert finished.is_error and finished.result_preview.endswith("disk on fire")
    assert "disk on fire" in text_of(events)


async def test_tool_loop_stops_at_max_tool_hops_with_a_clear_message(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session(max_tool_hops=2)
        events = await turn(session, 'call echo {"text": "x"} again')
        stored = b.history.load("c1")
    assert len(of_type(events, ToolCallFinished)) == 2
    assert len(b.model.requests) == 3
    assert text_of(events) == (
        "I stopped after 2 rounds of tool calls, the limit for one message, before reaching an"
        " answer. Ask me to continue, or narrow the request."
    )
    complete = events[-1]
    assert (complete.hops, complete.finish_reason) == (2, "max_tool_hops")
    assert complete.usage.total_tokens == 45
    assert [m["role"] for m in stored] == [
        "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert "tool_calls" not in stored[-1]


async def test_max_tool_hops_zero_offers_no_tools(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        events = await turn(await b.session(max_tool_hops=0), 'call add {"a": 1, "b": 1}')
    assert b.model.requests[0].tools == ()
    assert text_of(events) == 'Echo: call add {"a": 1, "b": 1}'


async def test_a_failed_server_is_absent_and_the_turn_works(tmp_path: Path) -> None:
    broken = McpServerConfig(command="/nonexistent/mcp-server")
    async with backend(tmp_path, {"broken": broken, "demo": DEMO}) as b:
        events = await turn(await b.session(), 'call add {"a": 2, "b": 2}')
    assert text_of(events) == "Tool add returned: 4.0"


async def test_model_error_ends_the_turn_with_the_typed_error(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        with pytest.raises(LLMServerError, match=r"^upstream is on fire \(scripted\)$"):
            await turn(session, "explode")
        assert text_of(await turn(session, "still there?")) == "Echo: still there?"
        stored = b.history.load("c1")
    # Failed before the model answered anything: the conversation is as it was (review 4).
    assert [m["content"] for m in stored] == ["still there?", "Echo: still there?"]
    assert b.model.requests[-1].messages[1:] == (
        {"role": "user", "content": "still there?"},)


# ---------------------------------------------------------------- history


async def test_history_is_persisted_and_reloaded_by_a_new_session_actor(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session("c9")
        await turn(session, 'call add {"a": 2, "b": 3}')
        first = b.history.load("c9")
        await b.system.stop_actor(session_actor_name("c9"), under="sessions")
        again = await b.session("c9")
        assert b.history.load("c9") == first
        await turn(again, "and now?")
        assert b.history.load("c9")[-1] == {"role": "assistant", "content": "Echo: and now?"}
    assert [m["role"] for m in first] == ["user", "assistant", "tool", "assistant"]
    assert b.model.requests[-1].messages[1:-1] == tuple(first)


async def test_turns_of_one_conversation_are_serialised_in_arrival_order(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        ended: list[str] = []

        async def run(text: str) -> None:
            await turn(session, text, request_id=text)
            ended.append(text)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "first slowly")
            await anyio.sleep(0.05)
            tg.start_soon(run, "second")
    assert ended == ["first slowly", "second"]
    assert b.model.requests[1].messages[1:] == (
        {"role": "user", "content": "first slowly"},
        {"role": "assistant", "content": "Echo: first slowly"},
        {"role": "user", "content": "second"},
    )


async def test_clear_history_forgets_the_conversation(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        await turn(session, "remember me")
        assert await session.ask(ClearHistory(), timeout=5) is None
        assert b.history.load("c1") == []
        assert not b.history.exists("c1")
        await turn(session, "who?")
    assert b.model.requests[-1].messages[1:] == ({"role": "user", "content": "who?"},)


async def test_context_budget_trims_the_oldest_messages_keeping_tool_pairs(
    tmp_path: Path,
) -> None:
    # Token estimates (o200k): system + new user message 16; the last answer 16; the tool result
    # alone 15 would still fit in 60, but not with its assistant message (21), so both go.
    output = "tool output that is quite long to count"
    async with backend(tmp_path) as b:
        session = await b.session(context_budget_tokens=60, system_prompt="Be brief.")
        await turn(session, "x" * 40)
        await turn(session, f'call echo {{"text": "{output}"}}')
        await turn(session, "last question")
        stored = b.history.load("c1")
    assert len(stored) == 8  # the store keeps everything; only the request is trimmed
    assert b.model.requests[-1].messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": f"Tool echo returned: {output}"},
        {"role": "user", "content": "last question"},
    )


def test_trim_history_never_splits_an_assistant_message_from_its_tool_results() -> None:
    call: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "add", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "add", "arguments": "{}"}},
    ]}
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "one"},
        call,
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": "2"},
        {"role": "assistant", "content": "done"},
    ]
    assert trim_history(history, model="gpt-4o", budget_tokens=10_000, max_messages=4) == (
        history[1:]
    )
    assert trim_history(history, model="gpt-4o", budget_tokens=10_000, max_messages=3) == (
        history[4:]
    )
    assert trim_history(history, model="gpt-4o", budget_tokens=10_000, max_messages=100) == history
    fits_last = trim_history(history, model="gpt-4o", budget_tokens=6, max_messages=100)
    assert fits_last == history[4:]
    orphan = trim_history(history[2:], model="gpt-4o", budget_tokens=10_000, max_messages=100)
    assert orphan == history[4:]
    unanswered = trim_history(history[:3], model="gpt-4o", budget_tokens=10_000, max_messages=9)
    assert unanswered == history[:1]


# ---------------------------------------------------------------- cancellation


async def test_leaving_the_stream_cancels_the_turn_and_the_model_stream(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        with anyio.fail_after(10):
            async with session.ask_stream(RunTurn("tell me slowly a long story", "r1")) as items:
                async for event in items:
                    assert isinstance(event, TurnText)
                    break
        with anyio.fail_after(5):
            while b.model.cancelled == 0:
                await anyio.sleep(0.01)
        assert b.system.status()[session_actor_name("c1")].in_flight == 0
        stored = b.history.load("c1")
        assert stored == [{"role": "user", "content": "tell me slowly a long story"}]
        assert text_of(await turn(session, "next")) == "Echo: next"


async def test_cancelling_during_tool_calls_stores_no_unanswered_call(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        with anyio.fail_after(10):
            async with session.ask_stream(RunTurn('call sleep {"seconds": 30}', "r1")) as items:
                async for event in items:
                    if isinstance(event, ToolCallStarted):
                        break
        with anyio.fail_after(5):  # the tool call was cancelled with the turn
            while b.system.status()[session_actor_name("c1")].in_flight or b.system.status()[
                "mcp:demo"
            ].in_flight:
                await anyio.sleep(0.01)
        stored = b.history.load("c1")
    assert stored == [{"role": "user", "content": 'call sleep {"seconds": 30}'}]



# ---------------------------------------------------------------- through the real router


async def test_tool_loop_through_the_router_and_the_simulator(tmp_path: Path) -> None:
    cost = CostConfig(db_path=str(tmp_path / "ledger.sqlite3"))
    async with SimulatorProcess() as sim:
        llm = simulated_llm_config(LLMConfig(cost=cost), sim.url)
        sessions = SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0)
        extra = [mcp_supervisor_spec({"demo": DEMO}), sessions]
        with HistoryStore(tmp_path / "history.sqlite3") as history:
            async with open_runtime(llm, extra_children=extra) as runtime:
                with anyio.fail_after(15):
                    while _health(runtime.system, "demo").state != "ready":
                        await anyio.sleep(0.02)
                session = await runtime.system.spawn(
                    session_child_spec(
                        "e2e",
                        router=runtime.router,
                        tools=ToolCatalog(runtime.system, ["demo"]),
                        history=history,
                        chat=ChatConfig(),
                    ),
                    under="sessions",
                )
                events = await turn(session, 'call add {"a": 2, "b": 3}')
                plain = await turn(session, "thanks")
    assert of_type(events, ToolCallStarted)[0].arguments == {"a": 2, "b": 3}
    assert of_type(events, ToolCallFinished)[0].result_preview == "5.0"
    assert text_of(events).startswith("Tool add returned: 5.0")
    complete = events[-1]
    assert isinstance(complete, TurnComplete)
    assert (complete.hops, complete.finish_reason) == (1, "stop")
    assert complete.usage.total_tokens > 0
    assert text_of(plain).startswith("Echo: thanks")


async def test_stopping_the_actor_mid_turn_persists_the_completed_steps(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        spec = session_child_spec(
            "c1", router=b.system.ref("router"), tools=b.tools, history=b.history,
            chat=ChatConfig(),
        )
        session = await b.system.spawn(replace(spec, shutdown_timeout=0.3), under="sessions")
        text = 'call add {"a": 1, "b": 2} and answer slowly'
        stop = functools.partial(b.system.stop_actor, session_actor_name("c1"), under="sessions")
        ended: list[BaseException] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                try:
                    async with session.ask_stream(RunTurn(text, "r1")) as items:
                        async for event in items:
                            if isinstance(event, ToolCallFinished):
                                tg.start_soon(stop)
                except ActorStopped as exc:
                    ended.append(exc)
        assert len(ended) == 1  # the caller learns that the turn was cut short
        stored = b.history.load("c1")
    assert [m["role"] for m in stored] == ["user", "assistant", "tool"]
    assert stored[2] == {"role": "tool", "tool_call_id": "call_1", "content": "3.0"}


# ---------------------------------------------------------------- issue 10 and 13


async def test_the_user_message_is_stored_first_then_each_step_as_it_happens_before_complete(
        tmp_path: Path) -> None:
    # The user message is written before the model is called (a killed process keeps it).
    async with backend(tmp_path) as b:
        session = await b.session()
        seen: list[tuple[str, list[str]]] = []
        with anyio.fail_after(30):
            async with session.ask_stream(RunTurn('call add {"a": 1, "b": 2}', "r1")) as items:
                async for event in items:
                    roles = [m["role"] for m in b.history.load("c1")]
                    seen.append((type(event).__name__, roles))
    step, answered = ["user", "assistant", "tool"], ["user", "assistant", "tool", "assistant"]
    assert seen[:2] == [("ToolCallStarted", ["user"]), ("ToolCallFinished", ["user"])]
    # The texts come after the step was stored; the answer may be stored (on the event loop, at
    # once) while this reader is still behind the session by a few texts, never after complete.
    texts = seen[2:-1]
    assert [kind for kind, _ in texts] == ["TurnText"] * 4
    assert [roles for _, roles in texts] == sorted((roles for _, roles in texts), key=len)
    assert all(roles in (step, answered) for _, roles in texts), texts
    assert seen[-1] == ("TurnComplete", answered)


async def test_a_failed_history_write_ends_the_turn_unsaved_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        # Another connection makes SQLite refuse assistant messages: a real failed write.
        db = sqlite3.connect(tmp_path / "history.sqlite3")
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.message LIKE"
            " '%\"assistant\"%' BEGIN SELECT RAISE(ABORT, 'disk is full'); END"
        )
        db.commit()
        events: list[Any] = []
        with pytest.raises(HistoryWriteError, match=r"^the conversation could not be saved;"):
            await _turn_into(session, "first", events)
        assert [type(e) for e in events] == [TurnText, TurnText]  # streamed, never completed
        db.execute("DROP TRIGGER refuse")
        db.commit()
        db.close()
        await turn(session, "second", "r2")
        sent = b.model.requests[-1].messages
        stored = b.history.load("c1")
    assert [m["content"] for m in sent[1:]] == ["first", "second"]  # no unsaved answer
    assert [m["role"] for m in stored] == ["user", "user", "assistant"]
    logged = [r.getMessage() for r in caplog.records if r.name == "actors.chat._session"]
    assert logged == [
        "conversation c1...: history write failed (IntegrityError: disk is full);"
        " the turn ends unsaved"
    ]


def test_logs_and_actor_names_never_hold_a_whole_conversation_id() -> None:
    # The id is the capability to use the conversation: logs get its first 8 characters, the
    # actor (whose name runtime logs and errors show) a digest.
    conversation_id = "0123456789abcdef" * 2
    assert conversation_label(conversation_id) == "01234567..."
    name = session_actor_name(conversation_id)
    assert name == "session:" + hashlib.sha256(conversation_id.encode()).hexdigest()[:32]
    assert conversation_id not in name


async def _turn_into(session: ActorRef, text: str, events: list[Any]) -> None:
    with anyio.fail_after(30):
        async with session.ask_stream(RunTurn(text, "r1")) as items:
            async for event in items:
                events.append(event)


async def test_tool_results_are_capped_with_a_note_to_the_model(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session(max_tool_result_chars=100)
        await turn(session, 'call echo {"text": "%s"}' % ("x" * 250))
        stored = b.history.load("c1")
    note = (
        "\n\n[Tool result truncated: it had 250 characters; only the first 100 are shown."
        " Ask the tool for less, or for a part, if you need more.]"
    )
    assert stored[2] == {"role": "tool", "tool_call_id": "call_1", "content": "x" * 100 + note}
    assert b.model.requests[1].messages[-1]["content"] == "x" * 100 + note


async def test_reasoning_streams_first_is_not_stored_and_details_go_back(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session()
        events = await turn(session, 'think and call add {"a": 1, "b": 1}')
        stored = b.history.load("c1")
    assert events[0] == TurnReasoning("Let me think. ")
    assert of_type(events, TurnReasoning) == [TurnReasoning("Let me think. ")]
    assert stored[1] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}}],
        "reasoning_details": [{"type": "reasoning.text", "text": "Let me think."}],
    }
    assert b.model.requests[1].messages[-2] == stored[1]  # sent back with the tool result
    assert all("Let me think" not in str(m.get("content")) for m in stored)
    complete = events[-1]
    assert isinstance(complete, TurnComplete)
    assert complete.usage.reasoning_tokens == 3


async def test_the_turn_names_its_model_effort_and_cost_limit(tmp_path: Path) -> None:
    async with backend(tmp_path) as b:
        session = await b.session(max_cost_per_turn=0.25)
        await turn(session, 'call add {"a": 1, "b": 1}', model="o4-mini", reasoning_effort="low")
        first, second = b.model.requests
    assert (first.model, first.reasoning_effort, first.turn_cost_limit) == ("o4-mini", "low", 0.25)
    assert (second.model, second.reasoning_effort) == ("o4-mini", "low")
    assert first.turn_id is not None and second.turn_id == first.turn_id
