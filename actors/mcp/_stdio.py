"""The stdio transport: the SDK's ``stdio_client`` with a bounded, linear line reader.

The SDK's reader keeps the unfinished line in a string and re-joins it with every chunk read
(``(buffer + chunk).split("\\n")``): a server's message of ``n`` bytes costs the event loop
``O(n²)`` copying (a 16 MB tool result took 4.4 s of CPU, 64 MB over a minute) and its memory
is unbounded (a server writing without a newline grows it forever). This reader collects a line
in pieces, joins it once, and ends the connection when a message exceeds ``max_message_bytes``
(or holds more values than :data:`~actors.mcp._intake.MAX_MESSAGE_VALUES`, counted unparsed):
the session then sees the connection close, as if the server had died, and
:attr:`StdioTransport.fault` says why. A line that is not a JSON-RPC message is dropped, the
first of a session logged without its text (the SDK logged each with a traceback quoting it: a
server printing its token to stdout put it in our logs). What the session should not see is
dropped here (:class:`~actors.mcp._intake.Intake`). Spawning and shutdown are the SDK's own
(its private helpers, ``mcp>=2.3,<3``; see :mod:`actors.mcp._sdk`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import anyio.lowlevel
import mcp_types

from ._intake import VALUES_FAULT, Intake, too_many_values
from ._sdk import (
    SessionMessage,
    StdioServerParameters,
    create_stdio_process,
    drain_stdout,
    get_default_environment,
    get_executable_command,
    stop_server_process,
    writer_flush_timeout,
)

__all__ = ["StdioTransport"]

logger = logging.getLogger(__name__)


class StdioTransport:
    """One stdio server process and the streams the SDK's session reads and writes."""

    def __init__(
        self, server: str, params: StdioServerParameters, errlog: TextIO, max_message_bytes: int,
        intake: Intake,
    ) -> None:
        self._server = server
        self._intake = intake
        self._params = params
        self._errlog = errlog
        self._max_message_bytes = max_message_bytes
        self._garbage_seen = False
        self.fault: str | None = None
        """Why we closed the connection, when the server broke a limit (``None``: we did not)."""

    @asynccontextmanager
    async def streams(self) -> AsyncIterator[tuple[Any, Any]]:
        """Spawn the server; yield ``(read_stream, write_stream)`` for ``ClientSession``.

        On exit, even when cancelled, the server is stopped as the SDK stops it (stdin closed,
        a grace period, then its process group killed), under a shield with bounded waits.
        """
        params = self._params
        process = await create_stdio_process(
            command=await get_executable_command(params.command),
            args=params.args,
            # _session's env is already the SDK's safe default plus the entry's own.
            env=params.env if params.env is not None else get_default_environment(),
            errlog=self._errlog,
            cwd=params.cwd,
        )
        # No awaits until the task group is entered (a cancellation could leak the process).
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
        writer_done = anyio.Event()

        async def stdout_reader() -> None:
            assert process.stdout is not None
            try:
                async with read_writer:  # its close is the session's end of stream
                    await self._read_lines(process.stdout, read_writer)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError):
                pass  # our shutdown closed the pipe, or the server's end broke: end of stream
            finally:
                # Until shutdown closes the pipe: a server blocked writing could not exit.
                await drain_stdout(process)

        async def stdin_writer() -> None:
            assert process.stdin is not None
            try:
                async with write_reader:
                    async for message in write_reader:
                        json = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                        await process.stdin.send((json + "\n").encode(params.encoding))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                await read_writer.aclose()  # the session sees the connection end
            finally:
                writer_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stdout_reader)
            tg.start_soon(stdin_writer)
            try:
                yield read_stream, write_stream
            finally:
                with anyio.CancelScope(shield=True):
                    read_stream.close()
                    write_stream.close()
                    with anyio.move_on_after(writer_flush_timeout):
                        await writer_done.wait()
                    await stop_server_process(process)
                    for stream in (read_stream, write_stream, read_writer, write_reader):
                        await stream.aclose()
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()

    async def _read_lines(self, stdout: Any, read_writer: Any) -> None:
        """Send each line of ``stdout`` to the session, parsed; stop at a line over the limit."""
        limit = self._max_message_bytes
        pieces: list[bytes] = []  # the line being read, in the chunks it came in
        size = 0
        async for chunk in stdout:
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                pieces.append(chunk[start:end])
                line = b"".join(pieces)
                pieces, size, start = [], 0, end + 1
                if len(line) > limit:
                    self._over_limit()
                    return
                if too_many_values(line):
                    self.fault = f"wrote {VALUES_FAULT}"
                    return
                try:
                    message = mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except ValueError:
                    self._not_json_rpc(len(line))
                    continue
                if self._intake.admit(message):
                    await read_writer.send(SessionMessage(message))
            if start < len(chunk):
                pieces.append(chunk[start:])
                size += len(chunk) - start
                if size > limit:
                    self._over_limit()
                    return

    def _not_json_rpc(self, size: int) -> None:
        if not self._garbage_seen:
            self._garbage_seen = True
            logger.warning(
                "MCP server %r wrote a line that is not a JSON-RPC message to stdout (%d bytes,"
                " not shown); this session's later ones are dropped without a word",
                self._server, size,
            )

    def _over_limit(self) -> None:
        self.fault = (
            f"wrote a message longer than max_message_bytes ({self._max_message_bytes} bytes)"
        )
