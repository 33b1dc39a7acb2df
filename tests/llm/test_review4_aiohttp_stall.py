"""On the aiohttp transport, a chunked body that breaks after a good chunk (a bad chunk size, the
connection held open), or an interim ``100 Continue`` followed by silence, no longer hangs until
the request's deadline: aiohttp drops its own read timer in both cases, so the provider bounds
the wait itself, by the provider's ``timeout`` (the read timeout httpx2 applies to every read).
A stream ends with the typed read-timeout error carrying the text it delivered, an answer with
``LLMTimeoutError``. A slow consumer is not a silent upstream.

A scripted upstream of our own on 127.0.0.1 (``tests/llm/raw_upstream.py``) writes the bytes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from typing import Any

import anyio
import pytest

from actors.llm import (
    ChatRequest,
    LLMResponse,
    LLMStreamingError,
    LLMTimeoutError,
    ProviderCall,
    ProviderConfig,
    TextDelta,
)
from actors.llm._response_bounds import StallWatch
from tests.llm.raw_upstream import scripted_upstream
from tests.llm.test_provider import call, running

pytestmark = pytest.mark.anyio

TIMEOUT = 1.0  # the provider's read timeout
DEADLINE = 30.0  # the request's: a hang would last this long


def chunk(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": text},
                                    "finish_reason": None}]}).encode()


def framed(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def head(content_type: str) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()


def config(base_url: str) -> ProviderConfig:
    return ProviderConfig(kind="openai-compatible", base_url=base_url, model="gpt-4o-mini",
                          requires_api_key=False, max_tokens=10, timeout=TIMEOUT)


async def broken_after(writer: asyncio.StreamWriter, first: bytes) -> None:
    """A good chunk, then (once it was read) a chunk size that is not one; the connection stays
    open until the test ends."""
    writer.write(first)
    await writer.drain()
    await anyio.sleep(0.2)
    writer.write(b"zz\r\nabc\r\n")
    await writer.drain()
    await anyio.sleep(DEADLINE + 10)


async def test_a_stream_broken_inside_a_chunk_ends_at_the_read_timeout_with_its_text() -> None:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        await broken_after(writer, head("text/event-stream")
                           + framed(b"data: " + chunk("hello") + b"\n\n"))

    items: list[Any] = []
    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport="aiohttp") as (_, ref):
        started = time.monotonic()
        with pytest.raises(LLMStreamingError) as caught:
            async with ref.ask_stream(call(stream=True), timeout=DEADLINE) as stream:
                async for item in stream:
                    items.append(item)
        elapsed = time.monotonic() - started
    assert items == [TextDelta("hello")]
    error = caught.value
    assert error.message == "stream from sim failed: no bytes for 1 s (read timeout)"
    assert (error.partial_text, error.retryable, error.provider) == ("hello", False, "sim")
    assert elapsed < DEADLINE / 2  # a hang lasts until the deadline


async def test_an_answer_broken_inside_a_chunk_ends_at_the_read_timeout() -> None:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        await broken_after(writer, head("application/json") + framed(b'{"choices": ['))

    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport="aiohttp") as (_, ref):
        started = time.monotonic()
        with pytest.raises(LLMTimeoutError) as caught:
            await ref.ask(call(), timeout=DEADLINE)
        elapsed = time.monotonic() - started
    assert caught.value.message == "request to sim timed out"
    assert elapsed < DEADLINE / 2


async def test_a_consumer_slower_than_the_read_timeout_is_not_a_silent_upstream() -> None:
    words = [f"w{i} " for i in range(3)]
    body = b"".join(framed(b"data: " + chunk(word) + b"\n\n") for word in words)

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head("text/event-stream") + body + framed(b"data: [DONE]\n\n")
                     + b"0\r\n\r\n")
        await writer.drain()

    delivered: list[str] = []

    async def slow_sink(item: object) -> None:
        assert isinstance(item, TextDelta)
        delivered.append(item.text)
        await anyio.sleep(TIMEOUT * 1.5)  # each delta waits longer than the read timeout

    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport="aiohttp") as (_, ref):
        message = ProviderCall(ChatRequest.of([{"role": "user", "content": "hi"}]),
                               "gpt-4o-mini", 10, stream=True, deltas=slow_sink)
        response: LLMResponse = await ref.ask(message, timeout=DEADLINE)
    assert response.content == "".join(words)
    assert "".join(delivered) == response.content


@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
async def test_an_interim_response_then_silence_ends_at_the_read_timeout(stream: bool) -> None:
    # aiohttp drops its read timer after a 1xx response and awaits the final one with none.
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await anyio.sleep(DEADLINE + 10)

    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport="aiohttp") as (_, ref):
        started = time.monotonic()
        with pytest.raises(LLMTimeoutError) as caught:
            if stream:
                async with ref.ask_stream(call(stream=True), timeout=DEADLINE) as items:
                    async for _ in items:
                        pass
            else:
                await ref.ask(call(), timeout=DEADLINE)
        elapsed = time.monotonic() - started
    assert caught.value.message == "request to sim timed out"
    assert elapsed < DEADLINE / 2


async def test_a_chunk_broken_while_the_consumer_is_busy_is_a_typed_error_with_its_text() -> None:
    # The bad chunk size comes while no read waits: aiohttp closes the connection, and the next
    # read raised a bare RuntimeError ('Connection closed.') through the provider.
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        await broken_after(writer, head("text/event-stream")
                           + framed(b"data: " + chunk("hello") + b"\n\n"))

    delivered: list[str] = []

    async def slow_sink(item: object) -> None:
        assert isinstance(item, TextDelta)
        delivered.append(item.text)
        await anyio.sleep(TIMEOUT * 1.5)  # the bad chunk (0.2 s) comes meanwhile

    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport="aiohttp") as (_, ref):
        message = ProviderCall(ChatRequest.of([{"role": "user", "content": "hi"}]),
                               "gpt-4o-mini", 10, stream=True, deltas=slow_sink)
        with pytest.raises(LLMStreamingError) as caught:
            await ref.ask(message, timeout=DEADLINE)
    assert delivered == ["hello"]
    error = caught.value
    assert error.message == "stream from sim failed: Connection closed."
    assert (error.partial_text, error.retryable) == ("hello", False)


async def test_the_watch_goes_on_after_finding_the_stream_idle_with_its_consumer() -> None:
    # The first check (1 s) finds no read waiting (the consumer holds "hello" for 1.5 s); the
    # bad chunk comes once the reader waits again, and only the watch ends that wait.
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head("text/event-stream") + framed(b"data: " + chunk("hello") + b"\n\n"))
        await writer.drain()
        for _ in range(7):  # comments, never silent for the read timeout, until 2.1 s
            await anyio.sleep(TIMEOUT * 0.3)
            writer.write(framed(b": ping\n\n"))
            await writer.drain()
        writer.write(b"zz\r\nabc\r\n")
        await writer.drain()
        await anyio.sleep(DEADLINE + 10)

    async def slow_sink(item: object) -> None:
        await anyio.sleep(TIMEOUT * 1.5)

    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport="aiohttp") as (_, ref):
        message = ProviderCall(ChatRequest.of([{"role": "user", "content": "hi"}]),
                               "gpt-4o-mini", 10, stream=True, deltas=slow_sink)
        started = time.monotonic()
        with pytest.raises(LLMStreamingError) as caught:
            await ref.ask(message, timeout=DEADLINE)
        elapsed = time.monotonic() - started
    assert (caught.value.partial_text, caught.value.retryable) == ("hello", False)
    assert elapsed < DEADLINE / 2  # a hang lasts until the deadline


def watches() -> int:
    gc.collect()
    return sum(1 for thing in gc.get_objects() if type(thing) is StallWatch)


@pytest.mark.parametrize("leave_early", [False, True], ids=["read-whole", "left-early"])
async def test_a_stream_that_ended_leaves_no_watch_behind(leave_early: bool) -> None:
    # A watch's timer left running rearms itself for ever, holding the stream's body.
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head("text/event-stream") + framed(b"data: " + chunk("hello") + b"\n\n"))
        await writer.drain()
        if leave_early:
            await anyio.sleep(DEADLINE + 10)
        writer.write(framed(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport="aiohttp") as (_, ref):
        assert watches() == 0
        async with ref.ask_stream(call(stream=True), timeout=DEADLINE) as stream:
            async for item in stream:
                if leave_early:
                    assert item == TextDelta("hello")
                    break
        left = watches()
        for _ in range(100):  # the call's task ends shortly after its caller left
            if not left:
                break
            await anyio.sleep(0.05)
            left = watches()
        assert left == 0
