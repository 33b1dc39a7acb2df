"""Review 7: an upstream's JSON is refused unparsed when it holds more objects and arrays than
any real answer to the request could.

One 32 MiB event of ``[{},{},...]`` (within ``max_response_bytes``) took ``json.loads`` seconds
of the event loop: parsing holds the GIL, so no other task ran. Now each event, and a
non-streaming body, is counted first (``{`` and ``[``; since, commas too: test_review7_values)
against :func:`~actors.llm._wire_decode.value_bound`: more than the request's whole output
limit could bring, so a real answer never reaches it.
"""

from __future__ import annotations

import json

import anyio
import pytest

from actors.llm import LLMServerError, StreamEnd
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

# max_tokens 10 (the config of test_review3_upstream_garbage): 65,536 + 10 x 16 values (commas
# and brackets: test_review7_values).
BOUND = 65_696
FLOOD = b"[" + b",".join([b"{}"] * (16 * 1024 * 1024 // 3)) + b"]"  # 16 MiB, 5.6 M objects


def test_the_bound_is_more_than_the_output_limit_could_bring() -> None:
    assert value_bound({"max_tokens": 10}) == BOUND
    assert value_bound({"max_completion_tokens": 4096}) == 65_536 + 4096 * 16
    assert value_bound({"max_tokens": 100, "n": 3}) == 65_536 + 100 * 16 * 3


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "ask"])
async def test_an_event_or_body_of_millions_of_objects_is_refused_without_holding_the_loop(
        transport: Transport, stream: bool) -> None:
    reply = sse_reply(b"data: " + FLOOD + b"\n\n") if stream else json_reply(FLOOD)
    async with raw_upstream(reply) as base_url:
        (items, error), stall = await longest_stall(outcome(base_url, transport, stream))
    assert items == []
    assert type(error) is LLMServerError
    assert error.message == (
        f"sim sent a malformed response (more than {BOUND} JSON values in one event or body)")
    assert (error.status_code, error.retryable) == (200, True)
    assert stall < 0.3, f"the event loop was held {stall:.2f} s"


def _tool_call_event(arguments: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"tool_calls": [{
                           "index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "f", "arguments": arguments}}]},
                           "finish_reason": "tool_calls"}]}).encode()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_brackets_inside_a_tool_calls_arguments_within_the_bound_pass(
        transport: Transport) -> None:
    """A whole tool call in one event (as Gemini sends it), its arguments a JSON text of
    30,000 objects (60,000 values with their commas): counted with the structure, and within
    the bound."""
    arguments = json.dumps([{} for _ in range(30_000)])
    reply = sse_reply(b"data: " + _tool_call_event(arguments) + b"\n\ndata: [DONE]\n\n")
    async with raw_upstream(reply) as base_url, running(
            config(base_url), transport=transport) as (_, ref):
        with anyio.fail_after(10):
            items = []
            async with ref.ask_stream(call(stream=True), timeout=8) as answer:
                async for item in answer:
                    items.append(item)
    final = items[-1]
    assert isinstance(final, StreamEnd)
    response = final.response
    assert [c.arguments for c in response.tool_calls] == [arguments]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_body_just_over_the_bound_is_refused_and_one_at_it_read(
        transport: Transport) -> None:
    def body(objects: int) -> bytes:
        # 8 values of the envelope: the body, choices, the choice, the message, 4 commas.
        content = "{" * (objects - 8)
        return json.dumps({"model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant",
                                                                  "content": content}}]}).encode()

    async with raw_upstream(json_reply(body(BOUND + 1))) as base_url:
        _, error = await outcome(base_url, transport, stream=False)
    assert isinstance(error, LLMServerError)
    assert "more than 65696 JSON values" in error.message
    async with raw_upstream(json_reply(body(BOUND))) as base_url, running(
            config(base_url), transport=transport) as (_, ref):
        with anyio.fail_after(10):
            answer = await ref.ask(call(), timeout=8)
    assert answer.content == "{" * (BOUND - 8)
