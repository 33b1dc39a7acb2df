"""What a hostile answer may make the runtime do, within ``max_response_bytes``: a tool call's
name in one-letter pieces, or one chunk of a hundred thousand choices, is assembled in linear
time; an answer of more than 256 tool calls is malformed (streamed or not); a huge tool-call index
allocates nothing; a huge output without usage is estimated from its beginning, not tokenized
whole on the event loop; a model name of megabytes is not taken from the answer; an endless stream
is charged its prompt and what it streamed, at most its output limit, and what it delivered stays
delivered; a number of 5001 digits is a malformed answer and a NaN parameter a bad request, not a
raw ``ValueError``; an error answered with status 200, or a stream answered with a JSON body, is
an error, not an empty answer.

A scripted upstream of our own on 127.0.0.1 (``tests/llm/raw_upstream.py``); the real ledger.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import (
    LLMBadRequestError,
    LLMConfig,
    LLMRateLimitError,
    LLMResponse,
    LLMServerError,
    LLMStreamingError,
    ProviderConfig,
    TextDelta,
    open_runtime,
)
from actors.llm._tokens import count_text_tokens
from actors.llm._wire_decode import StreamAssembly, decode_chunk
from tests.llm.raw_upstream import scripted_upstream
from tests.llm.test_attempt_spend import HELLO, output_limit_cost, settled
from tests.llm.test_provider import call, running

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"


def tool_piece(index: int, name: str | None = None, call_id: str | None = None) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {"arguments": "{}"}}
    if name is not None:
        piece["function"]["name"] = name
    if call_id is not None:
        piece["id"] = call_id
    return piece


def event(delta: dict[str, Any]) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def sse_answer(events: bytes) -> Any:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\n\r\n" + events + b"data: [DONE]\n\n")
        await writer.drain()

    return answer


def json_answer(body: dict[str, Any]) -> Any:
    data = json.dumps(body).encode()

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        await writer.drain()

    return answer


def completion(message: dict[str, Any], usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", **message}}]}
    if usage:
        body["usage"] = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    return body


def config(base_url: str) -> ProviderConfig:
    return ProviderConfig(kind="openai-compatible", base_url=base_url, model=MODEL,
                          requires_api_key=False, max_tokens=10, timeout=20)


def function_call(n: int) -> dict[str, Any]:
    return {"type": "function", "id": f"c{n}", "function": {"name": "f", "arguments": "{}"}}


def test_a_name_in_one_letter_pieces_and_a_chunk_of_many_choices_take_linear_time() -> None:
    # 35 s and 13 s of the event loop before (the name grown one letter at a time).
    first = decode_chunk({"choices": [{"delta": {"tool_calls": [tool_piece(0, "a", "c1")]}}]})
    letter = decode_chunk({"choices": [{"delta": {"tool_calls": [
        {"index": 0, "function": {"name": "a"}}]}}]})
    wide = decode_chunk({"choices": [{"delta": {"content": "c", "reasoning": "r"}}] * 800_000})
    assembly = StreamAssembly()
    started = time.perf_counter()
    assembly.add(first)
    for _ in range(800_000):
        assembly.add(letter)
    assert assembly.add(wide) == "c" * 800_000
    elapsed = time.perf_counter() - started
    assert assembly.added_reasoning == "r" * 800_000
    [tool] = assembly.tool_calls()
    assert (tool.id, tool.name, tool.arguments) == ("c1", "a" * 800_001, "{}")
    assert elapsed < 20


@pytest.mark.parametrize("count", [256, 257])
async def test_more_than_256_streamed_tool_calls_are_a_malformed_answer(count: int) -> None:
    events = b"".join(event({"tool_calls": [tool_piece(i, "f", f"c{i}")]})
                      for i in range(count))
    async with scripted_upstream(sse_answer(events)) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        if count == 256:
            response = await _streamed(ref)
            assert [c.id for c in response.tool_calls] == [f"c{i}" for i in range(256)]
            return
        with pytest.raises(LLMServerError) as caught:
            await _streamed(ref)
    assert caught.value.message == "sim sent a malformed response (more than 256 tool calls)"
    assert (caught.value.status_code, caught.value.retryable) == (200, True)


async def _streamed(ref: Any) -> LLMResponse:
    """The answer of one streamed call (its StreamEnd)."""
    end: Any = None
    async with ref.ask_stream(call(stream=True), timeout=10) as stream:
        async for item in stream:
            end = item
    return end.response  # type: ignore[no-any-return]


@pytest.mark.parametrize("count", [256, 257])
async def test_more_than_256_tool_calls_in_an_answer_are_a_malformed_answer(count: int) -> None:
    body = completion({"content": None, "tool_calls": [function_call(i) for i in range(count)]})
    async with scripted_upstream(json_answer(body)) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        if count == 256:
            response: LLMResponse = await ref.ask(call(), timeout=10)
            assert len(response.tool_calls) == 256
            return
        with pytest.raises(LLMServerError) as caught:
            await ref.ask(call(), timeout=10)
    assert caught.value.message == "sim sent a malformed response (more than 256 tool calls)"


async def test_a_huge_tool_call_index_is_one_call_in_its_order() -> None:
    events = (event({"tool_calls": [tool_piece(10**9, "late", "c9")]})
              + event({"tool_calls": [tool_piece(-5, "early", "c0")]}))
    async with scripted_upstream(sse_answer(events)) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        response = await _streamed(ref)
    assert [(c.id, c.name) for c in response.tool_calls] == [("c0", "early"), ("c9", "late")]


@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
async def test_a_huge_output_without_usage_is_estimated_from_its_beginning(stream: bool) -> None:
    # It was tokenized whole on the event loop: 4 MiB of one letter took tiktoken 2.9 s.
    text = "x" * 2**18 + "ab cd " * 2**20
    piece = len(text) // 8
    answer = (sse_answer(b"".join(event({"content": text[i:i + piece]})
                                  for i in range(0, len(text), piece))) if stream
              else json_answer(completion({"content": text}, usage=False)))
    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        response = await _streamed(ref) if stream else await ref.ask(call(), timeout=20)
    assert response.content == text
    first = count_text_tokens("x" * 2**18, MODEL)
    assert first == 32768
    assert response.usage.completion_tokens == -(-first * len(text) // 2**18)
    assert response.usage.completion_tokens != count_text_tokens(text, MODEL)


async def test_an_endless_stream_is_charged_its_prompt_and_output_limit_and_keeps_its_text(
        tmp_path: Path) -> None:
    async def endless(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\n\r\n")
        piece = event({"content": "word "})
        for _ in range(1_000_000):  # until the client goes away
            if writer.is_closing():
                return
            writer.write(piece)
            await writer.drain()

    async with scripted_upstream(endless) as upstream:
        config = LLMConfig.model_validate({
            "providers": {"garbage": {
                "kind": "openai-compatible", "base_url": upstream.base_url, "model": MODEL,
                "requires_api_key": False, "max_tokens": 64, "max_response_bytes": 2**20}},
            "active": "garbage", "fallback_order": ["garbage"],
            "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
            "request_timeout": 20})
        async with open_runtime(config) as rt:
            delivered: list[str] = []
            with anyio.fail_after(15), pytest.raises(LLMStreamingError) as caught:
                async with rt.stream(HELLO) as events:
                    async for item in events:
                        if isinstance(item, TextDelta):
                            delivered.append(item.text)
            snapshot = await settled(rt)
            assert snapshot.settled == pytest.approx(output_limit_cost(rt, MODEL))
    error = caught.value
    assert error.message == (
        "the stream from garbage failed after the first chunk: garbage sent an answer larger"
        " than max_response_bytes (1048576 bytes) (garbage:gpt-4o-mini)")
    assert error.partial_text == "".join(delivered)
    assert len(error.partial_text) > 5 * 64  # far more than the output limit streamed
    assert snapshot.reserved == 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
async def test_a_model_name_of_megabytes_is_not_taken_from_the_answer(stream: bool) -> None:
    # It became the metrics' model label (32 are kept for the process's life) and the answer's.
    name = "m" * 2**20
    if stream:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": name,
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
        answer = sse_answer(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    else:
        answer = json_answer({**completion({"content": "hi"}), "model": name})
    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        response = await _streamed(ref) if stream else await ref.ask(call(), timeout=10)
    assert (response.content, response.model) == ("hi", MODEL)


HUGE_INT = b"1" + b"0" * 5000  # Python reads at most 4300 digits into an int


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])
@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
async def test_a_number_of_5001_digits_is_a_malformed_answer_not_a_raw_value_error(
        stream: bool, transport: Any) -> None:
    text = event({"content": "hi"})
    late = b'data: {"created": ' + HUGE_INT + b', "choices": []}\n\n'
    body = json.dumps(completion({"content": "hi"})).encode().replace(
        b'"created": 1', b'"created": ' + HUGE_INT)
    answer = sse_answer(text + late) if stream else _raw_json(body)
    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport=transport) as (_, ref):
        delivered: list[Any] = []
        with pytest.raises(LLMStreamingError if stream else LLMServerError) as caught:
            if stream:
                async with ref.ask_stream(call(stream=True), timeout=10) as items:
                    async for item in items:
                        delivered.append(item)
            else:
                await ref.ask(call(), timeout=10)
    error = caught.value
    assert error.message == "sim sent a malformed response (ValueError)"
    if stream:
        assert delivered == [TextDelta("hi")]
        assert (error.partial_text, error.retryable) == ("hi", False)
    else:
        assert (error.status_code, error.retryable) == (200, True)


def _raw_json(data: bytes) -> Any:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        await writer.drain()

    return answer


@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
async def test_a_parameter_json_cannot_write_is_a_bad_request_and_nothing_is_sent(
        stream: bool) -> None:
    async with scripted_upstream(json_answer(completion({"content": "hi"}))) as upstream, \
            running(config(upstream.base_url)) as (_, ref):
        with pytest.raises(LLMBadRequestError) as caught:
            if stream:
                async with ref.ask_stream(call(stream=True, top_p=math.inf), timeout=10) as s:
                    async for _ in s:
                        pass
            else:
                await ref.ask(call(top_p=math.nan), timeout=10)
        assert upstream.heads == []
    assert caught.value.message == (
        "the request to sim cannot be written as JSON (ValueError: a number that is not"
        " finite?)")


@pytest.mark.parametrize(("error", "kind", "message", "status"), [
    ({"message": "Provider returned error", "code": 502}, LLMServerError,
     "sim answered with an error: Provider returned error", 502),
    ({"message": "slow down", "code": "429"}, LLMRateLimitError,
     "rate limited by sim: slow down", 429),
    ({"message": "key sk-abcdefghijklmnop leaked " + "x" * 2000, "code": 10**20},
     LLMServerError, "sim answered with an error: key [REDACTED] leaked " + "x" * 478, None),
    ("overloaded", LLMServerError, "sim answered with an error: overloaded", None),
], ids=["502", "429", "secret-and-long", "text"])
async def test_an_error_answered_with_status_200_is_an_error_not_an_empty_answer(
        error: Any, kind: type[Exception], message: str, status: int | None) -> None:
    # OpenRouter answers so when the model's own provider failed: it was served as an empty
    # answer, charged, and the router never fell back.
    body = {"error": error, "user_id": "u"}
    async with scripted_upstream(json_answer(body)) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        with pytest.raises(kind) as caught:
            await ref.ask(call(), timeout=10)
    assert type(caught.value) is kind
    assert (caught.value.message, caught.value.status_code, caught.value.retryable) == (
        message, status, True)


@pytest.mark.parametrize(("body", "kind", "message"), [
    ({"error": {"message": "Provider returned error", "code": 502}}, LLMServerError,
     "sim answered with an error: Provider returned error"),
    (completion({"content": "hi"}), LLMServerError,
     "sim sent a malformed response (MalformedResponse)"),
], ids=["error", "answer"])
async def test_a_stream_answered_with_a_json_body_is_an_error_not_an_empty_answer(
        body: dict[str, Any], kind: type[Exception], message: str) -> None:
    # Read as SSE, a JSON body held no event: the stream ended as an empty answer.
    async with scripted_upstream(json_answer(body)) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        items: list[Any] = []
        with pytest.raises(kind) as caught:
            async with ref.ask_stream(call(stream=True), timeout=10) as stream:
                async for item in stream:
                    items.append(item)
    assert items == []
    assert (caught.value.message, caught.value.retryable) == (message, True)


def typed_answer(content_type: str, data: bytes) -> Any:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: close"
                     b"\r\nContent-Length: %d\r\n\r\n" % (content_type.encode(), len(data))
                     + data)
        await writer.drain()

    return answer


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])
@pytest.mark.parametrize(("content_type", "data"), [
    ("text/html", b"<html><body>502 Bad Gateway</body></html>"),
    ("text/plain", b"upstream unavailable"),
    ("text/event-stream", b": OPENROUTER PROCESSING\n\ndata: [DONE]\n\n"),
], ids=["html", "text", "comments-only"])
async def test_a_stream_that_holds_no_event_is_a_malformed_answer_not_an_empty_one(
        transport: str, content_type: str, data: bytes) -> None:
    # f14cbc2 caught a JSON body only: a proxy's page ended as an empty successful answer.
    async with scripted_upstream(typed_answer(content_type, data)) as upstream, running(
            config(upstream.base_url), transport=transport) as (_, ref):
        items: list[Any] = []
        with pytest.raises(LLMServerError) as caught:
            async with ref.ask_stream(call(stream=True), timeout=10) as stream:
                async for item in stream:
                    items.append(item)
    assert items == []
    assert (caught.value.message, caught.value.status_code, caught.value.retryable) == (
        "sim sent a malformed response (a stream that holds no event)", 200, True)


async def test_an_answer_with_a_choice_and_an_error_key_is_served_as_an_answer() -> None:
    # Only a body with no choice is an error: a gateway may add an "error" beside an answer.
    body = {**completion({"content": "hi"}), "error": {"message": "a fallback was used"}}
    async with scripted_upstream(json_answer(body)) as upstream, running(
            config(upstream.base_url)) as (_, ref):
        response: LLMResponse = await ref.ask(call(), timeout=10)
    assert (response.content, response.finish_reason) == ("hi", "stop")
