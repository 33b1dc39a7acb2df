"""What the specification's ``get_response`` sends (section 3, ``params``; section 4, OpenRouter's
headers), review 8: read off the wire by an upstream on 127.0.0.1 that keeps each request."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from actors.llm.client_api import create_llm_client

KEY = "sk-spec-test-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hello world"}]
TOOLS = [{"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {}}}}]
ANSWER = json.dumps({
    "id": "c1", "object": "chat.completion", "created": 0, "model": "openai/gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}).encode()


@asynccontextmanager
async def keeping_upstream(seen: list[tuple[str, Any]]) -> AsyncIterator[str]:
    """Answers every request with :data:`ANSWER`, keeping its head and JSON body in ``seen``."""

    async def serve(stream: SocketStream) -> None:
        async with stream:
            data = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                head, _, body = data.partition(b"\r\n\r\n")
                found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                assert found is not None
                while len(body) < int(found.group(1)):
                    body += await stream.receive()
            seen.append((head.decode().lower(), json.loads(body)))
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(ANSWER), ANSWER))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{port}/api/v1"
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])
async def test_get_response_sends_the_configured_parameters_tools_kwargs_and_headers(
    transport: str,
) -> None:
    seen: list[tuple[str, Any]] = []
    async with keeping_upstream(seen) as base_url:
        config = {
            "base_url": base_url, "model": "openai/gpt-4o-mini", "transport": transport,
            "temperature": 0.3, "max_tokens": 77, "top_p": 0.9, "frequency_penalty": 0.5,
            "presence_penalty": -0.5, "extra_params": {"seed": 7},
            "extra_headers": {"HTTP-Referer": "https://localhost:8000", "X-Title": "MCP Platform"},
        }
        async with create_llm_client("openrouter", config, KEY) as client:
            response = await client.get_response(MESSAGES, tools=TOOLS, temperature=0.1)
    assert response.message == {"role": "assistant", "content": "ok"}
    assert len(seen) == 1
    head, body = seen[0]
    assert head.startswith("post /api/v1/chat/completions ")
    for header in (f"authorization: bearer {KEY.lower()}", "http-referer: https://localhost:8000",
                   "x-title: mcp platform"):
        assert f"\r\n{header}\r\n" in head + "\r\n"
    sent = {name: body.get(name) for name in (
        "model", "messages", "temperature", "max_tokens", "top_p", "frequency_penalty",
        "presence_penalty", "tools", "seed")}
    assert sent == {
        "model": "openai/gpt-4o-mini", "messages": MESSAGES, "temperature": 0.1,
        "max_tokens": 77, "top_p": 0.9, "frequency_penalty": 0.5, "presence_penalty": -0.5,
        "tools": TOOLS, "seed": 7,
    }
