"""What an upstream receives in a request's head: the completions path joined to the configured
base URL as the SDK joins a path (a prefix and a query kept), the key, the configured headers,
and nothing about this machine (the SDK's ``X-Stainless-OS``, ``-Arch``, ``-Runtime-Version``...
platform headers are left out; a configured header of the same name is sent).

Both transports, a scripted upstream on 127.0.0.1, the real runtime.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.llm import LLMConfig, open_runtime
from actors.llm._http_pool import Transport
from tests.llm.raw_upstream import scripted_upstream
from tests.llm.test_provider import HELLO, TRANSPORTS
from tests.llm.test_review7_money import values

pytestmark = pytest.mark.anyio

PLATFORM = ("x-stainless-lang", "x-stainless-package-version", "x-stainless-os",
            "x-stainless-arch", "x-stainless-runtime", "x-stainless-runtime-version",
            "x-stainless-async")
ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}


async def _answer(n: int, writer: asyncio.StreamWriter) -> None:
    body = json.dumps(ANSWER).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()


def _headers(head: str) -> dict[str, str]:
    lines = head.split("\r\n")[1:]
    return {name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)}


async def _heads(tmp_path: Path, suffix: str, **provider: Any) -> list[str]:
    async with scripted_upstream(_answer) as upstream:
        config = LLMConfig.model_validate(
            values(upstream.base_url + suffix, tmp_path, **provider))
        async with open_runtime(config) as rt:
            with anyio.fail_after(10):
                await rt.chat(HELLO)
                await rt.chat(HELLO)  # the URL parsed once per client serves every call
        return upstream.heads


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("suffix", "line"), [
    ("", "POST /v1/chat/completions HTTP/1.1"),
    ("/", "POST /v1/chat/completions HTTP/1.1"),
    ("/openai", "POST /v1/openai/chat/completions HTTP/1.1"),
    ("?api-version=2024", "POST /v1/?api-version=2024chat/completions HTTP/1.1"),
])
async def test_the_completions_path_is_joined_to_the_base_url_as_the_sdk_joins_it(
        transport: Transport, suffix: str, line: str, tmp_path: Path) -> None:
    # The last case is the SDK's own join of a path to a base URL with a query (its
    # ``_prepare_url``): the same bytes as before the URL was parsed once per client.
    heads = await _heads(tmp_path, suffix, transport=transport)
    assert [head.split("\r\n", 1)[0] for head in heads] == [line, line]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_header_describes_this_machine_to_the_upstream(
        transport: Transport, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-test-123\n")
    heads = await _heads(tmp_path, "", transport=transport, api_key_file=str(key),
                         requires_api_key=True, extra_headers={"X-Team": "blue"})
    for head in heads:
        headers = _headers(head)
        assert [name for name in PLATFORM if name in headers] == []
        assert headers["authorization"] == "Bearer sk-test-123"
        assert headers["x-team"] == "blue"
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("AsyncOpenAI/Python ")


async def test_a_configured_header_named_like_a_platform_header_is_sent(
        tmp_path: Path) -> None:
    heads = await _heads(tmp_path, "", extra_headers={"X-Stainless-OS": "ours"})
    assert [_headers(head)["x-stainless-os"] for head in heads] == ["ours", "ours"]
