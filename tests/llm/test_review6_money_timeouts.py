"""A stream that fails after its usage report is charged what the upstream reported (priced as a
successful stream's usage: its reported cost, else the price table), unless the report counts
less than the failed stream shows; and a non-streaming answer is bounded per silence on both
transports: the provider's ``timeout`` bounds each wait for bytes, not the whole answer.

A scripted upstream of our own on 127.0.0.1 (``tests/llm/raw_upstream.py``); the real ledger.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import (
    LLMClientError,
    LLMConfig,
    LLMResponse,
    LLMRuntime,
    LLMStreamingError,
    LLMTimeoutError,
    ProviderConfig,
    build_catalog,
    count_message_tokens,
    open_runtime,
)
from actors.llm._http_pool import Transport
from actors.llm._tokens import count_text_tokens
from tests.llm.raw_upstream import Answer, scripted_upstream
from tests.llm.test_attempt_spend import HELLO, settled
from tests.llm.test_provider import TRANSPORTS, call, running
from tests.llm.test_review4_aiohttp_stall import framed
from tests.llm.test_review4_answer_shape import MODEL, completion, config
from tests.llm.test_review5_upstream_errors import delta_chunk, sse_answer, text_chunk

pytestmark = pytest.mark.anyio

TIMEOUT = 0.5  # the provider's read timeout where a test waits for it
MAX_TOKENS = 10
ERROR_EVENT = {"error": {"code": 502, "message": "Provider returned error"}}
STREAMED = "Hello"


def usage_chunk(**usage: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [], "usage": usage}


REPORT = usage_chunk(prompt_tokens=30, completion_tokens=40, total_tokens=70)


@asynccontextmanager
async def ledgered(base_url: str, tmp_path: Path, transport: Transport,
                   timeout: float = 20) -> AsyncIterator[LLMRuntime]:
    """One provider on ``base_url`` with this read ``timeout``, the ledger on SQLite."""
    values = {"providers": {"sim": {
        "kind": "openai-compatible", "base_url": base_url, "model": MODEL,
        "requires_api_key": False, "max_tokens": MAX_TOKENS, "transport": transport,
        "timeout": timeout, "breaker": {"minimum_number_of_calls": 100}}},
        "active": "sim",
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 10.0},
        "request_timeout": 20}
    async with open_runtime(LLMConfig.model_validate(values)) as rt:
        yield rt


async def charged(answer: Answer, tmp_path: Path, transport: Transport,
                  timeout: float = 20) -> tuple[LLMClientError, float, float]:
    """The error a stream of ``answer`` ends with, the USD settled for it, what stays reserved."""
    async with scripted_upstream(answer) as upstream, ledgered(
            upstream.base_url, tmp_path, transport, timeout) as rt:
        with anyio.fail_after(10), pytest.raises(LLMClientError) as caught:
            async with rt.stream(HELLO) as items:
                async for _ in items:
                    pass
        snapshot = await settled(rt)
    return caught.value, snapshot.settled, snapshot.reserved


def price(prompt: int, completion: int) -> float:
    cost = build_catalog(LLMConfig.model_validate({"providers": {"p": {
        "kind": "openai-compatible", "base_url": "http://127.0.0.1:9", "model": MODEL,
        "requires_api_key": False}}})).cost_of(MODEL, prompt, completion)
    assert cost is not None and cost > 0
    return cost


def chunked_then_dropped(*events: dict[str, Any]) -> Answer:
    """A chunked 200 stream of these events whose connection closes inside the body (no last
    chunk): a dropped connection, not the end of the answer."""
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    data = b"".join(framed(b"data: %s\n\n" % json.dumps(e).encode()) for e in events)

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head + data + b"40\r\ndata: {\"id\"")  # a chunk cut short, then closed
        await writer.drain()

    return answer


def then_silent(*events: dict[str, Any]) -> Answer:
    """A 200 stream of these events, then silence until the test ends."""
    data = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events)

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\n\r\n" + data)
        await writer.drain()
        await anyio.sleep(60)

    return answer


def malformed_after(*events: dict[str, Any]) -> Answer:
    """These events, then one whose shape is not a chunk's."""
    return sse_answer(*events, {"id": "c", "choices": 5})


# -- a usage report, then a failure -----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("failure", ["error-event", "dropped", "malformed", "read-timeout"])
async def test_a_stream_failing_after_its_usage_report_is_charged_the_report(
        failure: str, transport: Transport, tmp_path: Path) -> None:
    # Before: charged its prompt as we count it (9 tokens) plus the estimate of what streamed
    # ("Hello": 1 token), whatever the upstream reported (30 + 40).
    events = (text_chunk(STREAMED), REPORT)
    answers: dict[str, Answer] = {
        "error-event": sse_answer(*events, ERROR_EVENT),
        "dropped": chunked_then_dropped(*events),
        "malformed": malformed_after(*events),
        "read-timeout": then_silent(*events),
    }
    started = time.monotonic()
    error, spent, reserved = await charged(answers[failure], tmp_path, transport,
                                           timeout=TIMEOUT)
    assert time.monotonic() - started < 8
    assert type(error) is LLMStreamingError
    assert error.partial_text == STREAMED
    assert spent == pytest.approx(price(30, 40), rel=1e-9)
    assert reserved == 0.0


@pytest.mark.parametrize("failure", ["error-event", "dropped"])
async def test_a_reported_cost_before_the_failure_is_what_is_charged(
        failure: str, tmp_path: Path) -> None:
    # OpenRouter's usage.cost: a successful stream is charged it, not the table's price.
    report = usage_chunk(prompt_tokens=30, completion_tokens=40, total_tokens=70,
                         cost=0.0123)
    events = (text_chunk(STREAMED), report)
    answer = (sse_answer(*events, ERROR_EVENT) if failure == "error-event"
              else chunked_then_dropped(*events))
    error, spent, reserved = await charged(answer, tmp_path, "aiohttp")
    assert type(error) is LLMStreamingError
    assert (spent, reserved) == (0.0123, 0.0)


async def test_a_report_before_any_text_is_charged_as_reported(tmp_path: Path) -> None:
    # The report alone is output: the error event after it is a stream's failure.
    error, spent, reserved = await charged(sse_answer(REPORT, ERROR_EVENT), tmp_path, "httpx2")
    assert type(error) is LLMStreamingError
    assert (error.partial_text, error.status_code) == ("", 502)
    assert spent == pytest.approx(price(30, 40), rel=1e-9)
    assert reserved == 0.0


async def test_a_report_counting_less_than_streamed_after_it_is_charged_the_larger(
        tmp_path: Path) -> None:
    # A report, then more text (a running count, or a report sent early): the report does not
    # cover what may be billed. Each count is the larger of the report's and ours, priced.
    text = "one two three four five six seven eight nine ten eleven twelve"
    streamed = min(count_text_tokens(text, MODEL), MAX_TOKENS)
    assert streamed == MAX_TOKENS
    answer = sse_answer(usage_chunk(prompt_tokens=30, completion_tokens=2, total_tokens=32),
                        text_chunk(text), ERROR_EVENT)
    error, spent, reserved = await charged(answer, tmp_path, "aiohttp")
    assert type(error) is LLMStreamingError
    assert spent == pytest.approx(price(30, MAX_TOKENS), rel=1e-9)
    assert reserved == 0.0


async def test_a_report_without_a_prompt_count_is_charged_our_prompt(tmp_path: Path) -> None:
    # A prompt of 0 tokens is no prompt's count: our own count stands (HELLO: 9 tokens).
    prompt = count_message_tokens(HELLO, MODEL)
    answer = sse_answer(text_chunk(STREAMED), usage_chunk(completion_tokens=40), ERROR_EVENT)
    error, spent, reserved = await charged(answer, tmp_path, "aiohttp")
    assert type(error) is LLMStreamingError
    assert spent == pytest.approx(price(prompt, 40), rel=1e-9)
    assert reserved == 0.0


async def test_a_failure_without_a_report_is_still_charged_its_prompt_and_what_streamed(
        tmp_path: Path) -> None:
    # Guard: no report, the estimate stands (unchanged).
    prompt = count_message_tokens(HELLO, MODEL)
    answer = sse_answer(delta_chunk({"content": STREAMED}), ERROR_EVENT)
    error, spent, reserved = await charged(answer, tmp_path, "aiohttp")
    assert type(error) is LLMStreamingError
    assert spent == pytest.approx(price(prompt, count_text_tokens(STREAMED, MODEL)), rel=1e-9)
    assert reserved == 0.0


# -- a non-streaming answer: each silence bounded, not the whole answer -----------------------


def trickled(body: bytes, pieces: int, gap: float, silent_after: int | None = None) -> Answer:
    """A 200 JSON answer of ``body`` (its length declared) written in ``pieces`` pieces, ``gap``
    seconds apart; with ``silent_after``, silent after that many pieces until the test ends."""
    size = -(-len(body) // pieces)

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        await writer.drain()
        for index in range(pieces):
            if index == silent_after:
                await anyio.sleep(60)
            await anyio.sleep(gap)
            writer.write(body[index * size:(index + 1) * size])
            await writer.drain()

    return answer


def timed(base_url: str) -> ProviderConfig:
    """A provider on ``base_url`` whose read timeout is :data:`TIMEOUT`."""
    return config(base_url).model_copy(update={"timeout": TIMEOUT})


LONG = "x" * 4000
BODY = json.dumps(completion({"content": LONG})).encode()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_answer_trickled_over_longer_than_the_timeout_completes(
        transport: Transport) -> None:
    # Before, on aiohttp: LLMTimeoutError at 0.5 s, the whole answer bounded by the timeout.
    async with scripted_upstream(trickled(BODY, 8, TIMEOUT * 0.3)) as upstream, running(
            timed(upstream.base_url), transport=transport) as (_, ref):
        started = time.monotonic()
        response: LLMResponse = await ref.ask(call(), timeout=20)
        elapsed = time.monotonic() - started
    assert response.content == LONG
    assert elapsed > TIMEOUT * 2  # it did take longer than the timeout


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_answer_silent_past_the_timeout_fails_soon_after_the_silence_began(
        transport: Transport) -> None:
    # Three pieces (0.45 s), then silence: the timeout counts from the last bytes.
    async with scripted_upstream(trickled(BODY, 8, TIMEOUT * 0.3, silent_after=3)) as upstream, \
            running(timed(upstream.base_url), transport=transport) as (_, ref):
        started = time.monotonic()
        with pytest.raises(LLMTimeoutError) as caught:
            await ref.ask(call(), timeout=20)
        elapsed = time.monotonic() - started
    assert caught.value.message == "request to sim timed out"
    silence_began = 3 * TIMEOUT * 0.3
    assert silence_began + TIMEOUT - 0.05 < elapsed < silence_began + TIMEOUT + 1.0
