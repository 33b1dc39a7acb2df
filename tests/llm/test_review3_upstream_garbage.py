"""A hostile upstream's bytes end every call in a typed error, on both transports: a response
that is not HTTP, JSON nested past the parser's depth, bytes that are not UTF-8 after text.

A raw upstream of our own on 127.0.0.1 writes exactly the bytes each test gives it."""

from __future__ import annotations

import json

import anyio
import pytest

from actors.llm import (
    LLMConnectionError,
    LLMServerError,
    LLMStreamingError,
    ProviderConfig,
    TextDelta,
)
from actors.llm._http_pool import Transport
from tests.llm.raw_upstream import raw_upstream
from tests.llm.test_provider import call, running

pytestmark = pytest.mark.anyio

TRANSPORTS: list[Transport] = ["aiohttp", "httpx2"]


def chunk(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": text},
                                    "finish_reason": None}]}).encode()


def sse_reply(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            + body)


def json_reply(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


# Past the parser's depth, within the count of objects and arrays refused unparsed (review 7).
DEEP = b"[" * 60_000 + b"]" * 60_000


def config(base_url: str) -> ProviderConfig:
    return ProviderConfig(kind="openai-compatible", base_url=base_url, model="gpt-4o-mini",
                          requires_api_key=False, max_tokens=10, timeout=5)


async def outcome(base_url: str, transport: Transport, stream: bool
                  ) -> tuple[list[object], BaseException]:
    """The items a call received and the error it ended with (bounded: 10 s)."""
    items: list[object] = []
    async with running(config(base_url), transport=transport) as (_, ref):
        with anyio.fail_after(10):
            try:
                if stream:
                    async with ref.ask_stream(call(stream=True), timeout=8) as answer:
                        async for item in answer:
                            items.append(item)
                else:
                    await ref.ask(call(), timeout=8)
            except Exception as exc:
                return items, exc
    raise AssertionError("the call succeeded")


NOT_HTTP = {
    "status line": b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\n{}",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True], ids=["ask", "stream"])
@pytest.mark.parametrize("garbage", list(NOT_HTTP))
async def test_a_response_that_is_not_http_is_a_retryable_connection_error(
        garbage: str, stream: bool, transport: Transport) -> None:
    async with raw_upstream(NOT_HTTP[garbage]) as base_url:
        items, error = await outcome(base_url, transport, stream)
    assert items == []
    assert isinstance(error, LLMConnectionError | LLMStreamingError), repr(error)
    assert error.message.startswith(("connection to sim failed: ", "stream from sim failed: "))
    assert (error.retryable, error.provider, error.model) == (True, "sim", "gpt-4o-mini")
    assert "127.0.0.1" not in error.message  # aiohttp's str() carries the URL


async def test_aiohttps_parse_error_is_named_by_its_own_message() -> None:
    async with raw_upstream(NOT_HTTP["status line"]) as base_url:
        _, error = await outcome(base_url, "aiohttp", stream=False)
    assert type(error) is LLMConnectionError
    assert error.message == (
        "connection to sim failed: ClientResponseError: Bad status line:\n"
        "  Invalid status code:\n\n  b'HTTP/1.1 abc OK'\n             ^")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("reply", [json_reply(DEEP), sse_reply(b"data: " + DEEP + b"\n\n")],
                         ids=["ask", "stream"])
async def test_json_nested_past_the_parsers_depth_is_a_malformed_answer(
        reply: bytes, transport: Transport) -> None:
    stream = b"event-stream" in reply
    async with raw_upstream(reply) as base_url:
        items, error = await outcome(base_url, transport, stream)
    assert items == []
    assert type(error) is LLMServerError
    assert error.message == "sim sent a malformed response (RecursionError)"
    assert (error.status_code, error.retryable) == (200, True)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("garbage", [b"\xff\xfe" + chunk("x"), DEEP], ids=["not utf-8", "deep"])
async def test_undecodable_bytes_after_text_end_the_stream_with_its_partial_text(
        garbage: bytes, transport: Transport) -> None:
    reply = sse_reply(b"data: " + chunk("hello") + b"\n\ndata: " + garbage + b"\n\n")
    async with raw_upstream(reply) as base_url:
        items, error = await outcome(base_url, transport, stream=True)
    assert items == [TextDelta("hello")]
    assert type(error) is LLMStreamingError
    assert (error.partial_text, error.retryable) == ("hello", False)
    name = "UnicodeDecodeError" if garbage.startswith(b"\xff") else "RecursionError"
    assert error.message == f"sim sent a malformed response ({name})"
