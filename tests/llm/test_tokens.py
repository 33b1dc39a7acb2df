"""Tests for actors.llm._tokens: offline tiktoken encodings and OpenAI's message-counting recipe."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext import openai_public  # type: ignore[import-untyped]

from actors.llm import _tokens as tokens
from actors.llm._tokens import (
    EncodingDataError,
    acount_message_tokens,
    count_message_tokens,
    count_text_tokens,
    count_tools_tokens,
    encoding_for_model,
    encoding_name_for_model,
)

# The example of OpenAI's cookbook "How to count tokens with tiktoken".
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "unit": {
                    "type": "string",
                    "description": "The unit",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location"],
        },
    },
}


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("openai/gpt-3.5-turbo:free", "cl100k_base"),
        ("anthropic/claude-sonnet-4", "o200k_base"),
        ("some-unknown-model", "o200k_base"),
    ],
)
def test_encoding_per_model_family(model: str, encoding: str) -> None:
    assert encoding_name_for_model(model) == encoding


def test_hello_world_matches_tiktoken_reference_ids() -> None:
    cl100k = encoding_for_model("gpt-4")
    o200k = encoding_for_model("gpt-4o")
    assert cl100k is not None
    assert o200k is not None
    assert cl100k.encode("hello world") == [15339, 1917]
    assert o200k.encode("hello world") == [24912, 2375]
    assert count_text_tokens("hello world", "gpt-4") == 2


def test_encoders_are_cached() -> None:
    assert encoding_for_model("gpt-4o") is encoding_for_model("openai/gpt-4o-mini")


def test_special_token_text_counts_as_plain_text() -> None:
    # "<", "|", "end", "of", "text", "|", ">" in o200k_base; never the special token 199999.
    assert count_text_tokens("<|endoftext|>", "gpt-4o") == 7
    o200k = encoding_for_model("gpt-4o")
    assert o200k is not None
    assert o200k.encode("<|endoftext|>", allowed_special="all") == [199999]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_example_counts(model: str, expected: int) -> None:
    assert count_message_tokens(COOKBOOK_MESSAGES, model) == expected


def test_recipe_three_per_message_one_per_name_three_for_priming() -> None:
    text_tokens = count_text_tokens("hi", "gpt-4o") + count_text_tokens("user", "gpt-4o")
    plain = [{"role": "user", "content": "hi"}]
    named = [{"role": "user", "content": "hi", "name": "bob"}]
    assert count_message_tokens(plain, "gpt-4o") == 3 + text_tokens + 3
    assert count_message_tokens(named, "gpt-4o") == (
        3 + text_tokens + count_text_tokens("bob", "gpt-4o") + 1 + 3
    )


def test_content_parts_count_text_and_a_fixed_price_per_image() -> None:
    parts = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    as_parts = count_message_tokens([{"role": "user", "content": parts}], "gpt-4o")
    as_text = count_message_tokens([{"role": "user", "content": "describe"}], "gpt-4o")
    assert as_parts == as_text + tokens.IMAGE_TOKENS


def test_tool_calls_count_name_arguments_and_framing() -> None:
    arguments = '{"location": "Paris"}'
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": arguments},
            }
        ],
    }
    base = count_message_tokens([{"role": "assistant"}], "gpt-4o")
    expected = (
        base
        + 3
        + count_text_tokens("get_current_weather", "gpt-4o")
        + count_text_tokens(arguments, "gpt-4o")
    )
    assert count_message_tokens([message], "gpt-4o") == expected


@pytest.mark.parametrize(("model", "func_init"), [("gpt-4o", 7), ("gpt-4", 10)])
def test_tool_definitions_follow_the_cookbook_constants(model: str, func_init: int) -> None:
    def t(text: str) -> int:
        return count_text_tokens(text, model)

    expected = (
        func_init
        + t("get_current_weather:Get the current weather in a given location")
        + 3  # properties
        + 3
        + t("location:string:The city and state, e.g. San Francisco, CA")
        + 3
        + (-3 + 3 + t("celsius") + 3 + t("fahrenheit"))
        + t("unit:string:The unit")
        + 12  # end
    )
    assert count_tools_tokens([WEATHER_TOOL], model) == expected
    messages = [{"role": "user", "content": "weather?"}]
    assert count_message_tokens(messages, model, tools=[WEATHER_TOOL]) == (
        count_message_tokens(messages, model) + expected
    )
    assert count_tools_tokens([], model) == 0


async def test_async_count_matches_sync_count() -> None:
    assert await acount_message_tokens(COOKBOOK_MESSAGES, "gpt-4o") == 124


async def test_async_count_offloads_large_inputs_to_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    original = tokens.count_message_tokens

    def recording(*args: Any) -> int:
        threads.append(threading.get_ident())
        return original(*args)

    monkeypatch.setattr(tokens, "count_message_tokens", recording)
    count_text_tokens("warm", "gpt-4o")
    small = [{"role": "user", "content": "hi"}]
    large = [{"role": "user", "content": "word " * 20_000}]
    await acount_message_tokens(small, "gpt-4o")
    assert await acount_message_tokens(large, "gpt-4o") == original(large, "gpt-4o")
    assert threads[0] == threading.get_ident()
    assert threads[1] != threading.get_ident()


@pytest.fixture
def fresh_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_encoders", {})
    monkeypatch.setattr(tokens, "_warned_missing", False)


@pytest.mark.usefixtures("fresh_encoders")
def test_loads_offline_with_an_empty_tiktoken_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    encoding = encoding_for_model("gpt-4")
    assert isinstance(encoding, tiktoken.Encoding)
    assert encoding.name == "cl100k_base"
    assert encoding.encode("hello world") == [15339, 1917]
    assert encoding.special_tokens_set == {
        "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>"
    }
    assert count_text_tokens("hello world", "gpt-4o") == 2


@pytest.mark.usefixtures("fresh_encoders")
def test_only_the_encodings_of_counted_models_are_loaded() -> None:
    assert tokens._encoders == {}
    count_text_tokens("hi", "gpt-4o-mini")
    assert sorted(tokens._encoders) == ["o200k_base"]
    count_text_tokens("hi", "gpt-4")
    assert sorted(tokens._encoders) == ["cl100k_base", "o200k_base"]


@pytest.mark.usefixtures("fresh_encoders")
def test_missing_files_fall_back_to_an_estimate_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tokens, "_DATA_DIR", ("data", "not_there"))
    with caplog.at_level(logging.WARNING, logger="actors.llm._tokens"):
        assert count_text_tokens("12345678", "gpt-4o") == 2
        assert count_text_tokens("123456789", "gpt-4") == 3
        assert encoding_for_model("gpt-4o") is None
    assert [r.getMessage() for r in caplog.records] == [
        "tiktoken encoding file o200k_base.tiktoken is missing from the package; "
        "token counts are estimated as characters / 4"
    ]


def _expecting_another_sum() -> dict[str, Any]:
    # tiktoken's cl100k_base constructor, but the sum it expects is not the shipped file's.
    ranks = load_tiktoken_bpe("https://example.invalid/cl100k_base.tiktoken",
                              expected_hash="0" * 64)
    return {"name": "cl100k_base", "pat_str": r"\S+", "mergeable_ranks": ranks,
            "special_tokens": {}}


@pytest.mark.usefixtures("fresh_encoders")
def test_corrupt_file_is_an_error_not_an_estimate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(openai_public.ENCODING_CONSTRUCTORS, "cl100k_base",
                        _expecting_another_sum)
    with pytest.raises(EncodingDataError,
                       match=r"^cl100k_base\.tiktoken is corrupt: its sha256 is not 0{64}$"):
        count_text_tokens("x", "gpt-4")


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("cl100k_base", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
        ("o200k_base", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    ],
)
def test_shipped_files_match_the_published_sums(name: str, published: str) -> None:
    shipped = Path(tokens.__file__).parent / "data" / "tiktoken" / f"{name}.tiktoken"
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == published
