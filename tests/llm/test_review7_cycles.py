"""A request leaves nothing for the cycle collector: its ``ProviderCall`` is freed when it ends.

A stream's ``StreamBill`` (review 7) held a closure over its ``ProviderCall``, which holds the
bill: a cycle per streamed request, holding its messages and its answer until a full collection.
``benchmarks/streams.py`` at 200 streams showed it as +15 KiB of RSS a turn (181 -> 200 -> 214
MiB over three runs of one server, against 173 -> 180 -> 186 before and after the fix). With the
collector off, only reference counting frees; a ``ProviderCall`` still alive is held by a cycle
(or a leak).

A stream its caller leaves (review 8): the router kept the cancellation in a local of the frame
its traceback holds (a cycle holding the frames of the attempt, so its call, messages and
text), and the provider's actor loop held the abandoned ask's notice until its next message.

The real runtime against a raw upstream on 127.0.0.1 (and a scripted one, on both transports).
"""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import anyio
import pytest

from actors.llm import LLMConfig, LLMRuntime, open_runtime
from actors.llm._http_pool import Transport
from actors.llm._messages import ProviderCall
from tests.llm.raw_upstream import raw_upstream, scripted_upstream
from tests.llm.test_attempt_spend import HELLO
from tests.llm.test_provider import TRANSPORTS
from tests.llm.test_review3_upstream_garbage import json_reply, sse_reply
from tests.llm.test_review4_aiohttp_stall import framed, head
from tests.llm.test_review7_money import chunk, values

pytestmark = pytest.mark.anyio

_EVENTS = [chunk("Hel"), chunk("lo"),
           {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}]
_STREAM = sse_reply(b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in _EVENTS)
                    + b"data: [DONE]\n\n")
_ANSWER = json_reply(json.dumps({
    "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}).encode())


async def _streamed(rt: LLMRuntime) -> str:
    with anyio.fail_after(10):
        async with rt.stream(HELLO) as items:
            text = [getattr(item, "text", "") async for item in items]
    return "".join(text)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "ask"])
async def test_a_request_leaves_no_cycle_holding_its_provider_call(
    tmp_path: Path, stream: bool,
) -> None:
    async with raw_upstream(_STREAM if stream else _ANSWER) as base_url, open_runtime(
            LLMConfig.model_validate(values(base_url, tmp_path))) as rt:

        async def one() -> None:
            if stream:
                assert await _streamed(rt) == "Hello"
            else:
                with anyio.fail_after(10):
                    assert (await rt.chat(HELLO)).content == "Hello"

        await one()  # pools and caches warm
        gc.collect()
        gc.disable()
        try:
            # Calls of earlier tests in this process that something still holds: not ours.
            before = {id(o) for o in gc.get_objects() if isinstance(o, ProviderCall)}
            for _ in range(3):
                await one()
            await anyio.sleep(0.2)  # the settles and metrics of the last one land
            alive = [o for o in gc.get_objects()
                     if isinstance(o, ProviderCall) and id(o) not in before]
        finally:
            gc.enable()
    assert alive == []


async def _first_text_then_silence(n: int, writer: asyncio.StreamWriter) -> None:
    writer.write(head("text/event-stream")
                 + framed(b"data: %s\n\n" % json.dumps(chunk("Hel")).encode()))
    await writer.drain()
    await anyio.sleep(10)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_its_caller_leaves_leaves_no_cycle_holding_its_provider_call(
    tmp_path: Path, transport: Transport,
) -> None:
    async with scripted_upstream(_first_text_then_silence) as upstream, open_runtime(
            LLMConfig.model_validate(values(upstream.base_url, tmp_path,
                                            transport=transport))) as rt:

        async def left() -> None:
            with anyio.fail_after(10):
                async with rt.stream(HELLO) as items:
                    async for item in items:
                        if getattr(item, "text", ""):
                            break  # the caller leaves mid-answer

        await left()
        await anyio.sleep(0.3)
        gc.collect()
        gc.disable()
        try:
            before = {id(o) for o in gc.get_objects() if isinstance(o, ProviderCall)}
            for _ in range(3):
                await left()
            await anyio.sleep(0.5)  # the abandoned asks' ends and charges land
            alive = [o for o in gc.get_objects()
                     if isinstance(o, ProviderCall) and id(o) not in before]
        finally:
            gc.enable()
    # Before: 6 (each left stream's call and its bill's copy, held by the cancellation's cycle).
    assert alive == []
