"""Review 5: the bytes a conversation holds as its actor starts, and inside a running turn.

Before, a new session actor read the newest ``max_history_messages`` (200) stored rows whole,
whatever their size, and only then trimmed them to ``chat.max_history_bytes``: 200 rows of 1 MiB
peaked at 400 MiB traced (each row's text and its decoded message), to keep 4 small messages.
And the messages a turn's tool steps added were bounded only by the model's context window and
the hop limit: every step's results (up to 32 of ``max_tool_result_chars``) stayed in the turn,
and in every later request of it, until the turn ended.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

from actors.chat import HistoryStore, TurnComplete, trim_history
from actors.chat._trimming import message_bytes, newest_units
from tests.chat.test_session import backend, of_type, turn

MiB = 1 << 20


def _contents(messages: Any) -> list[str]:
    return [str(m["content"]).split(" ")[0] for m in messages]


# -- (a) a session's start reads the store newest first, within the byte bound ------------------


async def test_a_new_session_reads_stored_rows_newest_first_only_within_max_history_bytes(
    tmp_path: Path,
) -> None:
    big = "x" * MiB
    async with backend(tmp_path, servers={}) as b:
        b.history.append("c1", [{"role": "user" if n % 2 == 0 else "assistant",
                                 "content": f"old{n} {big}"} for n in range(196)])
        b.history.append("c1", [{"role": "user", "content": "u1 hello"},
                                {"role": "assistant", "content": "a1 hi"},
                                {"role": "user", "content": "u2 again"},
                                {"role": "assistant", "content": "a2 yes"}])
        del big
        tracemalloc.start()
        try:
            session = await b.session()  # max_history_bytes 512 KiB, max_history_messages 200
            await turn(session, "next")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert _contents(b.model.requests[-1].messages[1:]) == ["u1", "a1", "u2", "a2", "next"]
    # One 1 MiB row read (its text and its decoded message) and the walk stops: before, 200 rows
    # of text and 200 decoded messages (measured: 400 MiB).
    assert peak < 3 * MiB, peak


def _stored_history() -> list[dict[str, Any]]:
    """Plain turns, whole tool steps, an orphan result (its call cut by max_stored_messages)
    and a step missing a result (both skipped, as :func:`trim_history` skips them)."""

    def call(call_id: str, text: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function",
                "function": {"name": "echo", "arguments": json.dumps({"text": text})}}

    def result(call_id: str, text: str) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": call_id, "content": text}

    return [
        result("gone", "orphan " + "o" * 900),
        {"role": "user", "content": "u1 " + "a" * 3000},
        {"role": "assistant", "content": "", "tool_calls": [call("c1", "p"), call("c2", "q")]},
        result("c1", "r1 " + "b" * 2000),
        result("c2", "r2 " + "c" * 1000),
        {"role": "assistant", "content": "a1 done"},
        {"role": "user", "content": "u2 " + "\U0001F600" * 700},
        {"role": "assistant", "content": "", "tool_calls": [call("c3", "s"), call("c4", "t")]},
        result("c3", "r3 only one of two"),
        {"role": "assistant", "content": "a2 " + "d" * 1200},
        {"role": "user", "content": "u3"},
        {"role": "assistant", "content": "", "tool_calls": [call("c5", "u")]},
        result("c5", "r5 " + "e" * 4000),
        {"role": "assistant", "content": "a3"},
    ]


def test_reading_newest_first_keeps_exactly_what_trimming_the_whole_rows_kept(
    tmp_path: Path,
) -> None:
    history = _stored_history()
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        store.append("c", history)
        for max_messages in (1, 3, 5, 200):
            for max_bytes in range(0, 30_000, 250):
                def select(newest: Any, m: int = max_messages, b: int = max_bytes) -> Any:
                    return newest_units(newest, max_messages=m, max_bytes=b)

                read = store.load_newest("c", max_messages, select)
                whole = trim_history(store.load("c", max_messages), max_messages=max_messages,
                                     max_bytes=max_bytes)
                assert read == whole, (max_messages, max_bytes)
                assert sum(map(message_bytes, read)) <= max_bytes
                assert not read or read[0]["role"] != "tool"


def test_the_walk_stops_at_the_first_unit_over_the_bound_without_holding_its_results() -> None:
    history = _stored_history()
    seen: list[str] = []

    def newest_first() -> Any:
        for message in reversed(history):
            seen.append(str(message["content"])[:2])
            yield message

    # a3, the c5 step and u3 fit; a2 (1,200 characters) does not: the walk ends there, and
    # nothing older is read.
    bound = sum(map(message_bytes, history[-5:])) - 1
    kept = newest_units(newest_first(), max_messages=200, max_bytes=bound)
    assert _contents(kept) == ["u3", "", "r5", "a3"]
    assert seen == ["a3", "r5", "", "u3", "a2"]
    # The c5 step is over the bound: the walk ends at its call, a3 alone kept.
    seen.clear()
    kept = newest_units(newest_first(), max_messages=200,
                        max_bytes=message_bytes(history[-1]) + 100)
    assert _contents(kept) == ["a3"]
    assert seen == ["a3", "r5", ""]


# -- (b) a running turn's own tool steps ---------------------------------------------------------

_LONG = "b" * 6000
_ASK = f'call echo {{"text": "{_LONG}"}} again'
"""A call of 6,000 characters, and again after every result (until ``max_tool_hops``)."""


def _step_bytes(messages: Any) -> int:
    """The bytes of a request's tool steps (after the system prompt and the user message)."""
    return sum(message_bytes(m) for m in messages[2:])


async def test_a_turns_older_tool_results_give_way_to_a_note_past_max_history_bytes(
    tmp_path: Path,
) -> None:
    async with backend(tmp_path) as b:
        session = await b.session(max_history_bytes=36_000, max_tool_hops=4)
        events = await turn(session, _ASK)
        assert of_type(events, TurnComplete)[0].finish_reason == "max_tool_hops"
        requests = [list(r.messages) for r in b.model.requests]
        assert len(requests) == 5
        call, result = requests[1][2], requests[1][3]
        assert (message_bytes(call), message_bytes(result)) == (6916, 6341)

        def shape(messages: list[dict[str, Any]]) -> list[str]:
            return ["call" if m["role"] == "assistant" else
                    "result" if m["content"] == f"Tool result: {_LONG}" or
                    m["content"] == _LONG else "note" for m in messages[2:]]

        # A step holds 13,257 bytes and a note 494. Two steps fit; a third (39,771) does not:
        # the oldest result goes (33,924); a fourth (47,181): the next two go (41,334, 35,487).
        assert [shape(r) for r in requests] == [
            [],
            ["call", "result"],
            ["call", "result", "call", "result"],
            ["call", "note", "call", "result", "call", "result"],
            ["call", "note", "call", "note", "call", "note", "call", "result"],
        ]
        assert [_step_bytes(r) for r in requests] == [0, 13257, 26514, 33924, 35487]
        note = requests[3][3]
        assert message_bytes(note) == 494
        assert note == {"role": "tool", "tool_call_id": "call_1", "content": (
            "[This result (6000 characters) was dropped from the conversation: this turn's"
            " tool steps may hold 36000 bytes. Call the tool again if you still need it.]")}
        # The store keeps every result whole.
        stored = b.history.load("c1")
        assert [m["content"] for m in stored if m["role"] == "tool"] == [_LONG] * 4


async def test_the_newest_step_is_sent_whole_even_alone_over_the_bound(tmp_path: Path) -> None:
    # One step of two 6,000-character results holds more than the bound: the model must see
    # the results it asked for (each already cut at max_tool_result_chars); nothing older is
    # left to drop.
    two = f'call echo {{"text": "{_LONG}"}} and call echo {{"text": "{_LONG}"}}'
    async with backend(tmp_path) as b:
        session = await b.session(max_history_bytes=10_000)
        events = await turn(session, two)
        assert of_type(events, TurnComplete)[0].finish_reason == "stop"
        last = list(b.model.requests[-1].messages)
    assert [m["content"] for m in last[3:]] == [_LONG, _LONG]


def test_a_steps_results_past_the_bound_are_read_one_at_a_time_not_held(tmp_path: Path) -> None:
    # A step of 24 results of 1 MiB under two small messages: the walk reads every result (it
    # must reach the call to know the step is whole) but holds only those within the bound, so
    # what it holds is one result, the message before and the row it is decoding (measured:
    # 4.0 MiB), not the step (25 MiB when every result was held).
    big = "r" * MiB
    calls = [{"id": f"c{n}", "type": "function",
              "function": {"name": "echo", "arguments": "{}"}} for n in range(24)]
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        store.append("c", [{"role": "user", "content": "u1"},
                           {"role": "assistant", "content": "", "tool_calls": calls},
                           *({"role": "tool", "tool_call_id": f"c{n}", "content": big}
                             for n in range(24)),
                           {"role": "assistant", "content": "a1"},
                           {"role": "user", "content": "u2"},
                           {"role": "assistant", "content": "a2"}])
        del big

        def select(newest: Any) -> Any:
            return newest_units(newest, max_messages=200, max_bytes=512 * 1024)

        tracemalloc.start()
        try:
            read = store.load_newest("c", 200, select)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert _contents(read) == ["a1", "u2", "a2"]
    assert peak < 6 * MiB, peak


async def test_the_next_turn_carries_the_notes_its_conversation_kept(tmp_path: Path) -> None:
    # Review 7 turned this around: the notes end with their turn, and the next turn's history
    # is what the store holds (whole results) trimmed to max_history_bytes, as a restart reads
    # it back (tests/chat/test_review7_resume.py); never more than the bound.
    async with backend(tmp_path) as b:
        session = await b.session(max_history_bytes=36_000, max_tool_hops=4)
        await turn(session, _ASK)
        await turn(session, "thanks", request_id="r2")
        last = list(b.model.requests[-1].messages)

    def label(message: dict[str, Any]) -> str:
        if message["role"] == "assistant":
            return "call" if message.get("tool_calls") else "answer"
        if message["role"] == "tool":
            return "result" if _LONG in message["content"] else "note"
        return str(message["role"])

    assert [label(m) for m in last] == [
        "system", "call", "result", "call", "result", "answer", "user"]
    assert sum(message_bytes(m) for m in last[1:-1]) <= 36_000
