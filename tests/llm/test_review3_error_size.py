"""An upstream's error message is copied into our error at most 500 characters long, after its
secrets are redacted: a hostile upstream's megabyte of "message" (a status error's body, or a
mid-stream error event) is not relayed to the client and the logs. A raw upstream on 127.0.0.1."""

from __future__ import annotations

import json

import anyio
import pytest

from actors.llm import LLMServerError, LLMStreamingError, ProviderConfig, TextDelta
from tests.llm.raw_upstream import raw_upstream
from tests.llm.test_provider import call, running

pytestmark = pytest.mark.anyio

KEY = "sk-review3-0123456789abcdef"
# The key straddles the 500th character: redacted before the cut, none of it is left.
HUGE = "x" * 490 + KEY + "y" * 1_000_000



def config(base_url: str) -> ProviderConfig:
    return ProviderConfig(kind="openai-compatible", base_url=base_url, model="gpt-4o-mini",
                          api_key_env="REVIEW3_KEY", max_tokens=10)


async def test_a_status_errors_huge_message_is_cut_after_redaction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVIEW3_KEY", KEY)
    body = json.dumps({"error": {"message": HUGE, "type": "server_error"}}).encode()
    reply = (b"HTTP/1.1 500 X\r\nContent-Type: application/json\r\nConnection: close\r\n"
             b"Content-Length: %d\r\n\r\n" % len(body) + body)
    async with raw_upstream(reply) as base_url, running(config(base_url)) as (_, ref):
        with anyio.fail_after(10), pytest.raises(LLMServerError) as failed:
            await ref.ask(call(), timeout=8)
    assert failed.value.message == "sim failed: " + "x" * 490 + "[REDACTED]"


async def test_a_mid_stream_error_events_huge_message_is_cut_after_redaction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVIEW3_KEY", KEY)
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}
    events = [chunk, {"error": {"message": HUGE, "code": 502}}]
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events).encode()
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
             + body)
    items: list[object] = []
    async with raw_upstream(reply) as base_url, running(config(base_url)) as (_, ref):
        with anyio.fail_after(10), pytest.raises(LLMStreamingError) as failed:
            async with ref.ask_stream(call(stream=True), timeout=8) as answer:
                async for item in answer:
                    items.append(item)
    assert items == [TextDelta("hello")]
    assert failed.value.message == "stream from sim failed: " + "x" * 490 + "[REDACTED]"
    assert (failed.value.partial_text, failed.value.status_code) == ("hello", 502)
