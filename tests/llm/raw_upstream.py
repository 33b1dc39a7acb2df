"""A raw upstream on 127.0.0.1 for tests: it answers every request with the same bytes, verbatim
(a status line that is not HTTP, a huge error body, a deep JSON answer...), whatever the SDK and
its transport make of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

__all__ = ["Answer", "ScriptedUpstream", "raw_upstream", "scripted_upstream"]


@asynccontextmanager
async def raw_upstream(reply: bytes) -> AsyncIterator[str]:
    """Serves ``reply`` to every request, then closes the connection; yields the base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()
        await server.wait_closed()


Answer = Callable[[int, asyncio.StreamWriter], Awaitable[None]]
"""Writes the answer to request ``n`` (numbered from 0) on ``writer``."""


@dataclass
class ScriptedUpstream:
    """What :func:`scripted_upstream` saw: each request's head (request line and headers)."""

    base_url: str
    heads: list[str] = field(default_factory=list)


@asynccontextmanager
async def scripted_upstream(answer: Answer) -> AsyncIterator[ScriptedUpstream]:
    """Reads each request whole (its ``Content-Length`` body too), lets ``answer`` write the
    reply (it may pace it, or never end it), then closes the connection."""
    upstream = ScriptedUpstream("")
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = 0
            for line in head.split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            upstream.heads.append(head)
            await answer(len(upstream.heads) - 1, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # ours, at the end (asyncio logs a connection callback's task cancelled)
        finally:
            handlers.discard(task)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream.base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        yield upstream
    finally:
        server.close()
        for task in list(handlers):  # answers that never end
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
