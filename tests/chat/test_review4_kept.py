"""Review 4: the history a live conversation keeps between turns, once it is at its bounds.

A long conversation reaches ``chat.max_history_messages`` (or ``chat.max_history_bytes``) and
stays there: every turn's commit then drops its oldest whole units. What it keeps must be what
:func:`trim_history` keeps of the whole stored conversation (what a fresh actor reads back).
"""

from __future__ import annotations

from pathlib import Path

from actors.chat import trim_history
from actors.chat._trimming import message_bytes
from tests.chat.test_session import backend, text_of, turn

_MAX_MESSAGES = 7
_MAX_BYTES = 16_000
_TWO_CALLS = 'call echo {"text": "q"} and call echo {"text": "r"}'
"""A step of three messages: the assistant's two calls and their two results."""


async def test_a_conversation_at_its_bounds_keeps_what_a_fresh_actor_would_read(
    tmp_path: Path,
) -> None:
    # Turns of varied sizes, some with a tool step (an assistant's calls and their results: one
    # unit of 2 or 3 messages), so that each bound in turn decides what goes, and a commit must
    # at times drop a unit whose first message alone would have been enough for the count.
    texts = [
        "short", "a" * 3000, 'call echo {"text": "' + "b" * 2500 + '"}', "tiny",
        "c" * 5000, "d" * 200, 'call echo {"text": "e"}', "f" * 6000, "g", "h" * 1500,
        "i" * 7000, "j", "k" * 2000, "l", _TWO_CALLS, "m", _TWO_CALLS, "n", "o", _TWO_CALLS,
        "p",
    ]
    async with backend(tmp_path) as b:
        session = await b.session(max_history_messages=_MAX_MESSAGES,
                                  max_history_bytes=_MAX_BYTES)
        sent: list[list[str]] = []
        expected: list[list[str]] = []
        for number, text in enumerate(texts):
            stored = b.history.load("c1")
            kept = trim_history(stored, max_messages=_MAX_MESSAGES, max_bytes=_MAX_BYTES,
                                size_of=message_bytes)
            expected.append([str(m["content"])[:12] + m["role"] for m in kept])
            first = len(b.model.requests)
            events = await turn(session, text, request_id=f"r{number}")
            assert text_of(events)
            # The first request of the turn: system prompt, the kept history, the user message.
            sent.append([str(m["content"])[:12] + m["role"]
                         for m in b.model.requests[first].messages[1:-1]])
    assert sent == expected
    # Both bounds decide in turn: the count (7) and the bytes (5 after the 5000-character turn,
    # 2 after the 7000-character one); a step of three drops whole (5 after the second).
    assert [len(kept) for kept in expected] == [
        0, 2, 4, 5, 7, 5, 7, 7, 7, 7, 5, 2, 4, 5, 7, 7, 7, 7, 7, 5, 7]
