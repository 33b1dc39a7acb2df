"""A raw upstream on 127.0.0.1 for tests: it answers every request with the same bytes, verbatim
(a status line that is not HTTP, a huge error body, a deep JSON answer...), whatever the SDK and
its transport make of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["raw_upstream"]


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
