"""The per-message token count cache: the same counts as counting afresh, bounded, never stale.

Counts go through the real tiktoken encoding, wrapped only to record what it is asked to encode.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import tiktoken

from actors.llm import _token_recipe as recipe
from actors.llm import _tokens as tokens
from actors.llm import count_message_tokens

MODEL = "gpt-4o-mini"

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2 + 3?", "name": "ada"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2'}},
    ]},
    {"role": "tool", "tool_call_id": "c1", "content": "5"},
    {"role": "user", "content": [{"type": "text", "text": "and this?"},
                                 {"type": "image_url", "image_url": {"url": "data:..."}}]},
]
TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]


class RecordingEncoding:
    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.texts: Counter[str] = Counter()

    def encode_ordinary(self, text: str) -> list[int]:
        self.texts[text] += 1
        return self.encoding.encode_ordinary(text)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> RecordingEncoding:
    real = tokens.encoding_for_model(MODEL)
    assert real is not None
    wrapper = RecordingEncoding(real)
    monkeypatch.setattr(tokens, "_encoders", {"o200k_base": wrapper})
    monkeypatch.setattr(tokens, "_counts", {})
    return wrapper


def uncached(recording: RecordingEncoding, messages: list[dict[str, Any]],
             tools: list[dict[str, Any]] | None = None) -> int:
    """The recipe's count with the real encoding, past the cache (and not recorded)."""
    real = recording.encoding
    total = recipe.REPLY_PRIMING_TOKENS + sum(
        recipe.one_message_tokens(real, message) for message in messages)
    return total + (recipe.tools_tokens(real, tools, cl100k=False) if tools else 0)


def test_cached_counts_equal_fresh_counts_and_encode_nothing_twice(
        recording: RecordingEncoding) -> None:
    first = count_message_tokens(MESSAGES, MODEL, TOOLS)
    encoded = sum(recording.texts.values())
    again = count_message_tokens(MESSAGES, MODEL, TOOLS)
    prefix = count_message_tokens(MESSAGES[:3], MODEL)
    assert first == again == uncached(recording, MESSAGES, TOOLS) == 169
    assert prefix == uncached(recording, MESSAGES[:3]) == 38
    assert sum(recording.texts.values()) == encoded  # the second and third: all from the cache


def test_a_changed_message_is_counted_again(recording: RecordingEncoding) -> None:
    message = {"role": "user", "content": "short"}
    before = count_message_tokens([message], MODEL)
    message["content"] = "a much longer question than before, with more tokens"
    after = count_message_tokens([message], MODEL)
    assert (before, after) == (uncached(recording, [{"role": "user", "content": "short"}]),
                               uncached(recording, [message]))
    assert recording.texts["short"] == 1
    assert recording.texts[message["content"]] == 1


def test_the_cache_is_bounded_least_recently_used_out(
        recording: RecordingEncoding, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipe, "COUNT_CACHE_ENTRIES", 3)
    kept = {"role": "user", "content": "kept"}
    for number in range(5):
        count_message_tokens([kept, {"role": "user", "content": f"message {number}"}], MODEL)
    assert len(tokens._counts["o200k_base"]) == 3
    assert recording.texts["kept"] == 1  # used every time: never the one evicted
    count_message_tokens([{"role": "user", "content": "message 0"}], MODEL)
    assert recording.texts["message 0"] == 2  # evicted, so counted again
