"""A hostile upstream's answer is bounded by ``max_response_bytes``, on both transports: a body
declared too large is refused before it is read, an endless body or stream is cut at the bound,
one endless SSE line too, an error body too; a compressed body (a few MiB of gzip inflate to GiB)
is refused, and requests ask for none. The call ends in a typed error naming the provider and the
bound, the text delivered stays delivered, and the next request is served.

A scripted upstream of our own on 127.0.0.1 (``tests/llm/raw_upstream.py``) writes the bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import anyio
import pytest

from actors.llm import (
    LLMResponse,
    LLMServerError,
    LLMStreamingError,
    ProviderConfig,
    StreamEnd,
    TextDelta,
)
from actors.llm._http_pool import Transport
from tests.llm.raw_upstream import Answer, scripted_upstream
from tests.llm.test_provider import call, running

pytestmark = pytest.mark.anyio

TRANSPORTS: list[Transport] = ["aiohttp", "httpx2"]
LIMIT = 65536
BOUND = f"sim sent an answer larger than max_response_bytes ({LIMIT} bytes)"
GOOD = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "fine"}}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                             "total_tokens": 6}}).encode()


def chunk(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": text},
                                    "finish_reason": None}]}).encode()


def config(base_url: str, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "kind": "openai-compatible", "base_url": base_url, "model": "gpt-4o-mini",
        "requires_api_key": False, "max_tokens": 10, "timeout": 20,
        "max_response_bytes": LIMIT}
    values.update(overrides)
    return ProviderConfig(**values)


def head(status: int = 200, content_type: str = "application/json", *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", "Connection: close",
             *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def endless(writer: asyncio.StreamWriter, piece: bytes, *, chunked: bool) -> None:
    """Writes ``piece`` until the client goes away (bounded: a million pieces; the caller's
    time limit ends it first when the client reads on)."""
    framed = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    for _ in range(1_000_000):
        if writer.is_closing():
            return
        writer.write(framed)
        await writer.drain()


def then_good(first: Answer) -> Answer:
    """``first`` for the first request, a good short answer for the others."""

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        if n == 0:
            await first(n, writer)
        else:
            writer.write(head(200, "application/json", f"Content-Length: {len(GOOD)}") + GOOD)
            await writer.drain()

    return answer


async def failure(base_url: str, transport: Transport, stream: bool,
                  **overrides: Any) -> tuple[list[object], BaseException, LLMResponse]:
    """The items the first call received, the error it ended with, and the next call's answer
    (a non-streaming one); 15 s at most."""
    items: list[object] = []
    error: BaseException | None = None
    async with running(config(base_url, **overrides), transport=transport) as (_, ref):
        with anyio.fail_after(15):
            try:
                if stream:
                    async with ref.ask_stream(call(stream=True), timeout=12) as answer:
                        async for item in answer:
                            items.append(item)
                else:
                    await ref.ask(call(), timeout=12)
            except Exception as exc:
                error = exc
            assert error is not None, "the call succeeded"
            after: LLMResponse = await ref.ask(call(), timeout=5)
    return items, error, after


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_declared_length_over_the_bound_is_refused_before_the_body_is_read(
        transport: Transport) -> None:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, "application/json", "Content-Length: 2000000000"))
        await writer.drain()
        await anyio.sleep(30)  # the body never comes: only the headers are read

    async with scripted_upstream(then_good(answer)) as upstream:
        items, error, after = await failure(upstream.base_url, transport, stream=False)
    assert type(error) is LLMServerError
    assert (error.message, error.status_code, error.retryable) == (BOUND, 200, True)
    assert after.content == "fine"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "until-close"])
async def test_an_endless_body_is_cut_at_the_bound(transport: Transport, chunked: bool) -> None:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        extra = ("Transfer-Encoding: chunked",) if chunked else ()
        start = b'{"choices": ['
        writer.write(head(200, "application/json", *extra)
                     + (b"%x\r\n%s\r\n" % (len(start), start) if chunked else start))
        await endless(writer, b'{"index": 0}, ' * 100, chunked=chunked)

    async with scripted_upstream(then_good(answer)) as upstream:
        _, error, after = await failure(upstream.base_url, transport, stream=False)
    assert type(error) is LLMServerError
    assert (error.message, error.status_code) == (BOUND, 200)
    assert after.content == "fine"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
async def test_an_error_status_with_an_endless_body_is_cut_and_not_billed(
        transport: Transport, stream: bool) -> None:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head(500, "application/json", "Transfer-Encoding: chunked"))
        await endless(writer, b'{"error": "' + b"x" * 1000 + b'", ', chunked=True)

    async with scripted_upstream(then_good(answer)) as upstream:
        items, error, after = await failure(upstream.base_url, transport, stream=stream)
    assert items == []
    assert type(error) is LLMServerError
    assert (error.message, error.status_code) == (BOUND, 500)
    assert after.content == "fine"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_endless_stream_ends_at_the_bound_with_the_text_it_delivered(
        transport: Transport) -> None:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, "text/event-stream", "Transfer-Encoding: chunked"))
        await endless(writer, b"data: " + chunk("word ") + b"\n\n", chunked=True)

    async with scripted_upstream(then_good(answer)) as upstream:
        items, error, after = await failure(upstream.base_url, transport, stream=True)
    assert type(error) is LLMStreamingError
    assert (error.message, error.retryable) == (BOUND, False)
    delivered = "".join(item.text for item in items if isinstance(item, TextDelta))
    assert not any(isinstance(item, StreamEnd) for item in items)
    # What was read before the bound reached the caller, and is the error's partial text.
    assert delivered == error.partial_text
    words = len(delivered) // len("word ")
    assert delivered == "word " * words
    per_event = len(b"data: " + chunk("word ") + b"\n\n")
    assert LIMIT // per_event - 2 <= words <= LIMIT // per_event
    assert after.content == "fine"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_endless_sse_line_is_cut_at_the_bound(transport: Transport) -> None:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, "text/event-stream", "Transfer-Encoding: chunked")
                     + b"%x\r\ndata: \r\n" % len(b"data: "))
        await endless(writer, b"a" * 4096, chunked=True)

    async with scripted_upstream(then_good(answer)) as upstream:
        items, error, after = await failure(upstream.base_url, transport, stream=True)
    assert items == []
    assert type(error) is LLMServerError
    assert (error.message, error.status_code, error.retryable) == (BOUND, 200, True)
    assert after.content == "fine"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
async def test_a_compressed_answer_is_refused_and_none_is_asked_for(
        transport: Transport, stream: bool) -> None:
    # 64 KiB of gzip that inflate to 64 MiB: counting the bytes received would not see it.
    bomb = gzip.compress(b" " * (64 * 2**20), compresslevel=9)
    assert len(bomb) < LIMIT

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        kind = "text/event-stream" if stream else "application/json"
        writer.write(head(200, kind, "Content-Encoding: gzip", f"Content-Length: {len(bomb)}")
                     + bomb)
        await writer.drain()

    async with scripted_upstream(then_good(answer)) as upstream:
        items, error, after = await failure(upstream.base_url, transport, stream=stream)
        heads = upstream.heads
    assert items == []
    assert type(error) is LLMServerError
    assert error.message == ("sim sent a compressed answer (Content-Encoding gzip) though it"
                             " was asked for none")
    assert after.content == "fine"
    assert len(heads) == 2
    for request in heads:
        assert "\r\naccept-encoding: identity\r\n" in request.lower()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_answer_within_the_bound_is_read_whole(transport: Transport) -> None:
    text = "y" * (LIMIT - 1024)
    body = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                 "total_tokens": 6}}).encode()
    assert LIMIT - 1024 < len(body) <= LIMIT

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, "application/json", "Transfer-Encoding: chunked"))
        for start in range(0, len(body), 1000):
            piece = body[start:start + 1000]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with scripted_upstream(answer) as upstream, running(
            config(upstream.base_url), transport=transport) as (_, ref):
        response: LLMResponse = await ref.ask(call(), timeout=10)
    assert response.content == text


def test_max_response_bytes_defaults_to_32_mib_and_refuses_less_than_1_kib() -> None:
    assert config("http://127.0.0.1:1/v1", max_response_bytes=1024).max_response_bytes == 1024
    default = ProviderConfig(kind="openai-compatible", base_url="http://127.0.0.1:1/v1",
                             model="m", requires_api_key=False)
    assert default.max_response_bytes == 32 * 2**20
    with pytest.raises(ValueError, match="max_response_bytes"):
        config("http://127.0.0.1:1/v1", max_response_bytes=1023)
