"""A stream that fails or is cancelled after streaming a tool call is charged the tool call's
pieces too, not only its text (the provider notes them: ``ProviderCall.on_output``). A raw
HTTP upstream of our own on 127.0.0.1, the real ledger on SQLite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from actors.llm import (
    LLMConfig,
    LLMRuntime,
    LLMStreamingError,
    TextDelta,
    count_message_tokens,
    open_runtime,
)
from actors.llm._tokens import count_text_tokens
from tests.llm.test_router import settled

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "call the tool"}]
ARGUMENTS = json.dumps({"query": "word " * 300})
PIECES = [ARGUMENTS[i:i + 40] for i in range(0, len(ARGUMENTS), 40)]


def tool_chunk(index: int, piece: str) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
    if index == 0:
        call.update(id="call_1", type="function", function={"name": "lookup", "arguments": piece})
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}


def text_chunk(text: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


@asynccontextmanager
async def sse_upstream(events: list[Any], hang: anyio.Event | None = None
                       ) -> AsyncIterator[str]:
    """Serves one SSE stream of ``events`` per request; then waits for ``hang`` (if given), else
    closes. Yields the base URL."""

    async def serve(stream: SocketStream) -> None:
        async with stream:
            with anyio.fail_after(10):
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                  b"connection: close\r\n\r\n"
                                  + b"".join(f"data: {json.dumps(e)}\n\n".encode()
                                             for e in events))
                if hang is not None:
                    await hang.wait()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{port}/v1"
        tg.cancel_scope.cancel()


@asynccontextmanager
async def runtime(base_url: str, tmp_path: Path) -> AsyncIterator[LLMRuntime]:
    config = LLMConfig.model_validate({
        "providers": {"p": {"kind": "openai-compatible", "base_url": base_url, "model": "m",
                            "requires_api_key": False, "max_tokens": 4000,
                            "breaker": {"minimum_number_of_calls": 100},
                            "prices": {"m": {"input": 1.0, "output": 1.0}}}},
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
        "request_timeout": 20,
    })
    async with open_runtime(config) as rt:
        yield rt


def charge(streamed: str) -> float:
    """USD of an attempt that sent HELLO and streamed ``streamed`` ($1 per 1M tokens)."""
    return (count_message_tokens(HELLO, "m") + count_text_tokens(streamed, "m")) / 1e6


async def test_a_stream_failing_after_a_tool_call_is_charged_its_pieces(tmp_path: Path) -> None:
    events = [*(tool_chunk(i, piece) for i, piece in enumerate(PIECES)),
              {"error": {"message": "upstream died", "type": "server_error"}}]
    async with sse_upstream(events) as base_url, runtime(base_url, tmp_path) as rt:
        with pytest.raises(LLMStreamingError,
                           match=r"^stream from p failed: upstream died \(p:m\)$"):
            async with rt.stream(HELLO) as items:
                async for _ in items:
                    pass
        assert await settled(rt) == pytest.approx(charge("lookup" + ARGUMENTS), abs=1e-12)


async def test_a_stream_cancelled_after_a_tool_call_is_charged_its_pieces(
        tmp_path: Path) -> None:
    hang = anyio.Event()
    events = [*(tool_chunk(i, piece) for i, piece in enumerate(PIECES)), text_chunk("x")]
    async with sse_upstream(events, hang) as base_url, runtime(base_url, tmp_path) as rt:
        async with rt.stream(HELLO) as items:
            with anyio.fail_after(10):
                first = await items.__anext__()  # after every tool piece: the stream is ordered
            assert first == TextDelta("x")
        hang.set()
        assert await settled(rt) == pytest.approx(charge("lookup" + ARGUMENTS + "x"), abs=1e-12)
