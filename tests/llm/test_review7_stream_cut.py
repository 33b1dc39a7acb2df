"""A stream cut off mid-answer on an upstream that bills the whole answer however the stream ends
(``stream_cancel_stops_billing`` false): our read timeout or a dropped connection leaves the
upstream generating, so the attempt is charged its whole output limit (unless a usage report
came), like a cancel; the upstream's own error event says it stopped: charged what streamed.

Both transports, a scripted upstream on 127.0.0.1, the real ledger on SQLite.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import LLMClientError, LLMConfig, TextDelta, open_runtime
from actors.llm._http_pool import Transport
from tests.llm.raw_upstream import Answer, scripted_upstream
from tests.llm.test_attempt_spend import HELLO, settled
from tests.llm.test_provider import TRANSPORTS
from tests.llm.test_review4_aiohttp_stall import framed, head
from tests.llm.test_review6_money_timeouts import REPORT
from tests.llm.test_review7_money import STREAMED, chunk, values

pytestmark = pytest.mark.anyio

WHOLE = 7.35e-06  # 9 prompt + 10 output tokens (the output limit)
SHOWN = 1.95e-06  # 9 prompt + 1 streamed token
ERROR_EVENT = {"error": {"code": 502, "message": "Provider returned error"}}


def _events(*events: dict[str, Any]) -> bytes:
    return b"".join(framed(b"data: %s\n\n" % json.dumps(e).encode()) for e in events)


def silent(*events: dict[str, Any]) -> Answer:
    """These events, then nothing (our read timeout cuts the stream)."""
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head("text/event-stream") + _events(*events))
        await writer.drain()
        await anyio.sleep(60)
    return answer


def dropped(*events: dict[str, Any]) -> Answer:
    """These events, then the connection reset mid-body (no last chunk)."""
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head("text/event-stream") + _events(*events))
        await writer.drain()
        await anyio.sleep(0.3)
        writer.transport.abort()
    return answer


def ended(*events: dict[str, Any]) -> Answer:
    """These events, then the body's end (the stream is whole as sent)."""
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(head("text/event-stream") + _events(*events) + b"0\r\n\r\n")
        await writer.drain()
    return answer


async def _charged(answer: Answer, tmp_path: Path, transport: Transport,
                   stops: bool | None = False) -> float:
    options: dict[str, Any] = {"transport": transport, "timeout": 0.5}
    if stops is not None:
        options["stream_cancel_stops_billing"] = stops
    async with scripted_upstream(answer) as upstream:
        config = LLMConfig.model_validate(values(upstream.base_url, tmp_path, **options))
        async with open_runtime(config) as rt:
            texts = []
            with anyio.fail_after(10), pytest.raises(LLMClientError):
                async with rt.stream(HELLO) as items:
                    async for item in items:
                        if isinstance(item, TextDelta):
                            texts.append(item.text)
            assert texts == [STREAMED]  # cut mid-answer, after its text
            snapshot = await settled(rt)
    assert snapshot.reserved == 0.0
    return snapshot.settled


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_our_read_timeout_cut_is_charged_whole(
        transport: Transport, tmp_path: Path) -> None:
    # Before: $0.00000195 (what streamed), though the upstream runs on and bills it all.
    assert await _charged(silent(chunk(STREAMED)), tmp_path, transport) == WHOLE


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_whose_connection_dropped_is_charged_whole(
        transport: Transport, tmp_path: Path) -> None:
    assert await _charged(dropped(chunk(STREAMED)), tmp_path, transport) == WHOLE


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stream_the_upstream_ended_with_its_error_event_is_charged_what_streamed(
        transport: Transport, tmp_path: Path) -> None:
    # The upstream said it stopped: what streamed is what it billed (as before).
    assert await _charged(ended(chunk(STREAMED), ERROR_EVENT), tmp_path, transport) == SHOWN


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cut_stream_of_an_upstream_that_stops_billing_is_charged_what_streamed(
        transport: Transport, tmp_path: Path) -> None:
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
    assert await _charged(silent(chunk(STREAMED)), tmp_path / "a", transport, None) == SHOWN
    assert await _charged(dropped(chunk(STREAMED)), tmp_path / "b", transport, True) == SHOWN


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cut_stream_after_its_usage_report_is_charged_the_report(
        transport: Transport, tmp_path: Path) -> None:
    assert await _charged(silent(chunk(STREAMED), REPORT), tmp_path, transport) == 2.85e-05
