"""A request leaves nothing for the cycle collector: its ``ProviderCall`` is freed when it ends.

A stream's ``StreamBill`` (review 7) held a closure over its ``ProviderCall``, which holds the
bill: a cycle per streamed request, holding its messages and its answer until a full collection.
``benchmarks/streams.py`` at 200 streams showed it as +15 KiB of RSS a turn (181 -> 200 -> 214
MiB over three runs of one server, against 173 -> 180 -> 186 before and after the fix). With the
collector off, only reference counting frees; a ``ProviderCall`` still alive is held by a cycle
(or a leak). (A stream its caller leaves is not covered: its cancellation's exception and
traceback hold frames in cycles of their own, Python's, which the collector frees.)

The real runtime against a raw upstream on 127.0.0.1.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import anyio
import pytest

from actors.llm import LLMConfig, LLMRuntime, open_runtime
from actors.llm._messages import ProviderCall
from tests.llm.raw_upstream import raw_upstream
from tests.llm.test_attempt_spend import HELLO
from tests.llm.test_review3_upstream_garbage import json_reply, sse_reply
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
