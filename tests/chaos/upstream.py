"""A tiny raw HTTP/1.1 server on 127.0.0.1 that answers chat completions with whatever it is told.

It speaks just enough HTTP for the openai SDK: it reads the request line, headers and a
``Content-Length`` body, then writes the bytes of the current :class:`Reply` (status line,
headers, body, or a stream of raw SSE bytes) and closes the connection. Tests set
:attr:`GarbageUpstream.reply` before each call: a good answer, or garbage.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

__all__ = ["GOOD_STREAM", "GarbageUpstream", "Reply", "good_completion", "sse"]


@dataclass(frozen=True)
class Reply:
    """What to answer: a status line and headers from ``status`` and ``content_type``, then
    ``body`` verbatim (with ``Content-Length``, unless ``chunked_stream``: then the body ends
    when the connection closes, as an SSE stream may)."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    chunked_stream: bool = False


def good_completion(text: str = "fine") -> dict[str, Any]:
    return {
        "id": "chatcmpl-good", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def sse(events: list[Any], *, done: bool = True) -> bytes:
    """Events as SSE ``data:`` lines (strings go verbatim, other values as JSON)."""
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-good", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


GOOD_STREAM = sse([
    _chunk({"role": "assistant", "content": "fi"}), _chunk({"content": "ne"}),
    _chunk({}, "stop"),
    {"id": "chatcmpl-good", "object": "chat.completion.chunk", "created": 1,
     "model": "gpt-4o-mini", "choices": [],
     "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
])


class GarbageUpstream:
    """``async with GarbageUpstream() as up:`` serves on ``up.base_url`` until the block ends."""

    def __init__(self) -> None:
        self.reply = Reply(body=json.dumps(good_completion()).encode())
        self.stream_reply = Reply(content_type="text/event-stream", body=GOOD_STREAM,
                                  chunked_stream=True)
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            self.requests += 1
            try:
                streaming = bool(json.loads(body).get("stream"))
            except (ValueError, AttributeError):
                streaming = False
            reply = self.stream_reply if streaming else self.reply
            headers = [f"HTTP/1.1 {reply.status} X", f"Content-Type: {reply.content_type}",
                       "Connection: close"]
            if not reply.chunked_stream:
                headers.append(f"Content-Length: {len(reply.body)}")
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + reply.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass  # the client went away: nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()
