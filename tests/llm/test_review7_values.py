"""Review 7: an upstream's JSON is bounded by its values (commas and brackets), not only its
objects and arrays, on every path it is parsed: a stream's events, an answer, an error body, a
stream answered with a JSON body.

``json.loads`` of ``[1,1,...]`` costs ~0.08 us a number: 10,000,000 of them (20 MB, within
``max_response_bytes``) held the event loop ~1 s, with no bracket to count. The error bodies
(the SDK parses them to build its status error) and a stream answered with JSON were parsed
uncounted. Now :class:`~actors.llm._response_bounds.BoundedBody` counts a body that is parsed
whole (an error status's, or a JSON one) as its bytes arrive, and the SSE decoder each event.

A real upstream of our own on 127.0.0.1, on both transports.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from actors.llm import LLMServerError, StreamEnd, TextDelta
from actors.llm._http_pool import Transport
from actors.llm._wire_decode import value_bound
from tests.llm.raw_upstream import raw_upstream
from tests.llm.test_provider import call, running
from tests.llm.test_review3_upstream_garbage import (
    TRANSPORTS,
    config,
    json_reply,
    outcome,
    sse_reply,
)
from tests.loop_stall import longest_stall

pytestmark = pytest.mark.anyio

# max_tokens 10 (the config of test_review3_upstream_garbage): 65,536 + 10 x 16.
BOUND = 65_696
NUMBERS = b"[" + b"1," * 10_000_000 + b"1]"  # 20 MB, no object or array but one
MALFORMED = (f"sim sent a malformed response (more than {BOUND} JSON values in one event or"
             " body)")


def _error_reply(body: bytes) -> bytes:
    return (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_the_bound_counts_every_value_the_output_limit_could_bring() -> None:
    # 16 a token: one token of cl100k_base holds 8 commas at most (",,,,,,,," is one), and a
    # reasoning text may come twice (reasoning, reasoning_details).
    assert value_bound({"max_tokens": 10}) == BOUND
    assert value_bound({"max_completion_tokens": 4096}) == 65_536 + 4096 * 16
    # Each log probability: 7 of its own, 8 in its token's text, 127 in its bytes (a token of
    # 128 spaces); as many for each top alternative.
    assert value_bound({"max_tokens": 100, "logprobs": True, "top_logprobs": 5}) == (
        65_536 + 100 * (16 + 142 * 6))
    assert value_bound({"max_tokens": 100, "n": 3}) == 65_536 + 100 * 16 * 3


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "ask"])
async def test_an_error_body_of_millions_of_numbers_is_refused_without_holding_the_loop(
        transport: Transport, stream: bool) -> None:
    async with raw_upstream(_error_reply(NUMBERS)) as base_url:
        (items, error), stall = await longest_stall(outcome(base_url, transport, stream))
    assert items == []
    assert type(error) is LLMServerError
    # The status error of a 500, without the body's words.
    assert error.message == "sim failed: Error code: 500"
    assert (error.status_code, error.retryable) == (500, True)
    assert stall < 0.3, f"the event loop was held {stall:.2f} s"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("how", ["ask", "stream answered with JSON", "stream event"])
async def test_an_answer_of_millions_of_numbers_is_refused_without_holding_the_loop(
        transport: Transport, how: str) -> None:
    reply = sse_reply(b"data: " + NUMBERS + b"\n\n") if how == "stream event" else (
        json_reply(NUMBERS))
    async with raw_upstream(reply) as base_url:
        (items, error), stall = await longest_stall(outcome(base_url, transport, how != "ask"))
    assert items == []
    assert type(error) is LLMServerError
    assert error.message == MALFORMED
    assert (error.status_code, error.retryable) == (200, True)
    assert stall < 0.3, f"the event loop was held {stall:.2f} s"


def _answer(message: dict[str, Any]) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop", "message": {
                           "role": "assistant", **message}}]}).encode()


# 16,000 tokens of a tokenizer at its worst (8 commas or brackets a token): 128,000 of them.
LIMIT = 16_000
TEXT = ",,,{[[{,," * (LIMIT * 8 // 9)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_long_answer_of_commas_and_brackets_within_its_limit_is_read(
        transport: Transport) -> None:
    async with raw_upstream(json_reply(_answer({"content": TEXT}))) as base_url, running(
            config(base_url), transport=transport) as (_, ref):
        with anyio.fail_after(10):
            answer = await ref.ask(call(max_tokens=LIMIT), timeout=8)
    assert answer.content == TEXT


# A tool call's arguments: 100,000 numbers, 200,000 characters (fewer tokens than LIMIT).
ARGUMENTS = json.dumps({"xs": [7] * 100_000}, separators=(",", ":"))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "ask"])
async def test_a_tool_call_with_big_arguments_is_read(transport: Transport,
                                                      stream: bool) -> None:
    tool_call = {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "f", "arguments": ARGUMENTS}}
    if stream:
        event = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                            "model": "m", "choices": [{"index": 0, "delta": {
                                "tool_calls": [tool_call]}, "finish_reason": "tool_calls"}]})
        reply = sse_reply(b"data: " + event.encode() + b"\n\ndata: [DONE]\n\n")
    else:
        reply = json_reply(_answer({"content": None, "tool_calls": [tool_call]}))
    async with raw_upstream(reply) as base_url, running(
            config(base_url), transport=transport) as (_, ref):
        with anyio.fail_after(10):
            if stream:
                items = []
                async with ref.ask_stream(call(stream=True, max_tokens=LIMIT),
                                          timeout=8) as answer:
                    async for item in answer:
                        items.append(item)
                final = items[-1]
                assert isinstance(final, StreamEnd)
                assert not [item for item in items if isinstance(item, TextDelta)]
                response = final.response
            else:
                response = await ref.ask(call(max_tokens=LIMIT), timeout=8)
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("f", ARGUMENTS)]
