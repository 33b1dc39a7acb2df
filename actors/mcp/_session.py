"""A thin, well-behaved wrapper over the ``mcp`` SDK client, for the McpServerActor.

It drives the SDK's ``ClientSession`` over its stdio or streamable HTTP transport and negotiates
the protocol version as ``mcp.Client`` does (its default ``mode="auto"``), without importing
``mcp.Client`` and with it the SDK's server half (see :mod:`actors.mcp._sdk`). Two things
``mcp.Client.call_tool`` adds are not needed here: answering a server's input requests (we offer
no sampling, elicitation or roots, so such a call fails either way) and re-listing a tool whose
schema changed since start (the catalog the model sees is the start-time listing anyway). Nor
is a result checked against the tool's output schema (see :class:`_Session`). It
translates the SDK's errors into ours (the tree is in
:mod:`actors.mcp._errors`). A tool that *runs* and reports failure (``isError``) is not an
exception: ``call_tool`` returns a ``ToolResult`` with ``is_error=True`` so the model can read the
message and correct itself.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc
import httpx2
import mcp_types
import pydantic
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from ._config import McpServerConfig
from ._errors import McpServerError, McpToolError, McpToolTimeout
from ._http import STREAM_LOST, HttpTransport, call_wait
from ._intake import MAX_LISTED_TOOLS, Intake
from ._redact import redact_server_text
from ._sdk import (
    ClientSession,
    JSONRPCDispatcher,
    MCPError,
    StdioServerParameters,
    get_default_environment,
    negotiate_auto,
)
from ._stderr import StderrTail
from ._stdio import StdioTransport
from ._tool_types import ToolResult, ToolSpec

__all__ = ["McpSession", "open_mcp_session"]

logger = logging.getLogger(__name__)

_CLIENT_INFO: Final = mcp_types.Implementation(name="mcp-backend", version="0.1.0")
# A server that paginates forever must not hang start-up.
_MAX_TOOL_PAGES: Final = 100
# After a failed start, how long to wait for the last stderr bytes of the dead process.
_STDERR_DRAIN_SECONDS: Final = 0.5


class McpSession:
    """An initialized connection to one MCP server; made by ``open_mcp_session``.

    ``call_tool`` may be called from several tasks at once (requests are multiplexed).
    """

    def __init__(
        self,
        name: str,
        config: McpServerConfig,
        client: ClientSession,
        tools: list[ToolSpec],
        pid: int | None,
        stderr: StderrTail | None,
        transport: StdioTransport | HttpTransport,
        intake: Intake,
        background: anyio.abc.TaskGroup,
    ) -> None:
        self.name = name
        self.tools = tools
        self.pid = pid
        self.server_info: mcp_types.Implementation | None = client.server_info
        self.protocol_version: str | None = client.protocol_version
        self._config = config
        self._client = client
        self._stderr = stderr
        self._transport = transport
        self._intake = intake
        self._background = background
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the ``open_mcp_session`` block has exited."""
        return self._closed

    @property
    def connection_ended(self) -> bool:
        """True once the transport's streams ended: over stdio, the server closed its output
        (exited, or runs on without it); nothing more can be read from it."""
        return self._intake.ended

    def __repr__(self) -> str:
        where = f"stdio pid={self.pid}" if self._config.transport == "stdio" else "http"
        state = "closed" if self._closed else "open"
        return f"<McpSession {self.name!r} [{where} | {len(self.tools)} tools | {state}]>"

    async def call_tool(
        self, name: str, arguments: dict[str, Any], timeout: float | None = None
    ) -> ToolResult:
        """Call tool ``name``; ``timeout`` defaults to the configured ``call_timeout``.

        Raises ``McpToolTimeout`` (the server is told to cancel the call), ``McpToolError`` when
        the server rejects the request, ``McpServerError`` when the server is gone. Cancelling
        the caller cancels the call.
        """
        if self._closed:
            raise McpServerError(self.name, "session is closed")
        limit = self._config.call_timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                result = await self._detached_call(name, arguments, limit)
        except TimeoutError:
            raise McpToolTimeout(self.name, name, limit) from None
        except MCPError as exc:
            # -32000 is also the code JSON-RPC servers commonly use for their own errors: it is
            # ours only once the connection ended, or made up by the HTTP transport for an
            # answer that cannot come. A server that broke a limit ends the session whatever
            # error its call got.
            if self._transport.fault is not None or (exc.code == CONNECTION_CLOSED and (
                self._intake.ended or exc.data is STREAM_LOST
            )):
                raise McpServerError(self.name, self._died_reason(exc)) from exc
            if exc.code == REQUEST_TIMEOUT:
                raise McpToolTimeout(self.name, name, limit) from exc
            raise McpToolError(
                f"Tool {name!r} was rejected by the server: {exc.message}",
                server=self.name,
                tool=name,
            ) from exc
        except anyio.EndOfStream:
            raise McpServerError(self.name, "session is closed") from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise McpServerError(self.name, f"connection failed: {exc!r}") from exc
        except httpx2.HTTPError as exc:
            raise McpServerError(self.name, f"HTTP request failed: {exc!r}") from exc
        except RuntimeError as exc:
            # The SDK raises RuntimeError for a result it cannot use (one asking for input).
            raise McpToolError(
                f"Tool {name!r} returned an invalid result: {exc}", server=self.name, tool=name
            ) from exc
        except pydantic.ValidationError as exc:
            # The answer was read whole and broke the protocol's schema: the session is intact.
            raise McpToolError(
                f"Tool {name!r} returned a result that breaks the MCP protocol"
                f" ({_schema_breaks(exc)}).",
                server=self.name,
                tool=name,
            ) from None
        return ToolResult.from_call_result(result)

    async def _detached_call(
        self, name: str, arguments: dict[str, Any], limit: float
    ) -> mcp_types.CallToolResult:
        """The SDK's call, run in a task of the session: its outcome, or its error raised here.

        A caller that stops waiting (its timeout, its cancellation) cancels the call and returns
        at once. The SDK then writes a courtesy cancel to the server, shielded, for up to 5 s: a
        server that reads nothing more held every call given up 5 s past its timeout.
        """
        outcomes, outcome = anyio.create_memory_object_stream[
            tuple[mcp_types.CallToolResult | None, Exception | None]](1)
        scope = anyio.CancelScope()

        async def run() -> None:
            with outcomes, scope:
                try:
                    # Over HTTP each request of the call reads for as long as the call waits.
                    with call_wait(limit):
                        result = await self._client.call_tool(name, arguments)
                except Exception as exc:  # raised in the caller, which translates it
                    outcomes.send_nowait((None, exc))
                else:
                    outcomes.send_nowait((result, None))

        self._background.start_soon(run)
        with outcome:
            try:
                result, error = await outcome.receive()  # EndOfStream: the session closed
            except BaseException:
                scope.cancel()
                raise
        if error is not None:
            raise error
        assert result is not None
        return result

    def _died_reason(self, error: MCPError) -> str:
        if self._transport.fault is not None:
            return self._transport.fault  # the server broke a limit, or forgot the session
        if isinstance(self._transport, HttpTransport):
            lost = error.message if error.data is STREAM_LOST else "connection closed"
            return f"closed the connection ({lost})"
        tail = self._stderr.tail() if self._stderr is not None else ""
        reason = "closed the connection (the server process exited or was killed)"
        return f"{reason}; stderr tail: {tail}" if tail else reason

    def _mark_closed(self) -> None:
        self._closed = True


@asynccontextmanager
async def open_mcp_session(name: str, config: McpServerConfig) -> AsyncIterator[McpSession]:
    """Start (stdio) or connect to (streamable HTTP) an MCP server, initialize it, list its tools.

    Must be entered and exited in the same task (anyio cancel-scope rule). Start-up is bounded by
    ``config.startup_timeout``; on exit, even when cancelled, the process is terminated and every
    stream closed (the SDK's shutdown is shielded and bounded).

    Raises ``McpServerError`` if the command is missing, the server exits or fails during
    start-up (the message carries its stderr tail), or start-up times out. An exception raised
    in the body comes out as itself, not wrapped in an exception group.
    """
    if not config.enabled:
        raise McpServerError(name, "is disabled in the configuration (enabled: false)")
    stderr = (
        StderrTail(name, functools.partial(redact_server_text, config=config))
        if config.transport == "stdio" else None
    )
    intake = Intake(name)
    transport = _transport(name, config, stderr, intake)
    started = False
    try:
        async with anyio.create_task_group() as tg:
            if stderr is not None:
                tg.start_soon(stderr.pump)
            try:
                # One scope around the whole lifetime: its deadline bounds start-up only, and at
                # close it shields the SDK's teardown (a scope entered later could not enclose
                # the task groups the SDK opened during start-up).
                deadline = anyio.current_time() + config.startup_timeout
                with anyio.CancelScope(deadline=deadline) as life:
                    async with _connect(transport, stderr, intake) as client:
                        tools = await _list_tools(name, client, config.max_message_bytes)
                        pid = stderr.find_child_pid() if stderr is not None else None
                        session = McpSession(
                            name, config, client, tools, pid, stderr, transport, intake, tg
                        )
                        started = True
                        life.deadline = math.inf
                        try:
                            yield session
                        finally:
                            session._mark_closed()
                            life.shield = True
                if not started:
                    await _drain(stderr)
                    reason = f"did not start within {config.startup_timeout:g} s"
                    raise McpServerError(name, _with_tail(reason, stderr))
            except BaseException as exc:
                failure = _sole_exception(exc)
                if started or not isinstance(failure, _STARTUP_FAILURES):
                    raise
                await _drain(stderr)
                if transport.fault is not None:
                    raise McpServerError(name, transport.fault) from failure
                reason = _with_tail(_startup_failure(failure, config), stderr)
                raise McpServerError(name, reason) from failure
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # anyio 4 task groups (ours and the SDK's) wrap everything that crosses them.
        sole = _sole_exception(group)
        if sole is group:
            raise
        raise sole from sole.__cause__
    finally:
        if stderr is not None:
            stderr.close()


_STARTUP_FAILURES: Final = (
    MCPError,
    pydantic.ValidationError,
    OSError,
    httpx2.HTTPError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


def _sole_exception(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _startup_failure(exc: BaseException, config: McpServerConfig) -> str:
    if isinstance(exc, FileNotFoundError):
        if config.cwd is not None and exc.filename == config.cwd:
            return f"could not start: working directory not found: {config.cwd!r}"
        return f"could not start: command not found: {config.command!r}"
    if isinstance(exc, PermissionError):
        return f"could not start: permission denied running {config.command!r}"
    if isinstance(exc, MCPError) and exc.data is STREAM_LOST:
        return f"could not be reached during start-up: {exc.message}"
    if isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED:
        return "exited during start-up"
    if isinstance(exc, MCPError):
        return f"failed to initialize: {exc.message}"
    if isinstance(exc, pydantic.ValidationError):
        return f"failed to initialize: its answer breaks the MCP protocol ({_schema_breaks(exc)})"
    return f"could not be reached during start-up: {exc!r}"


def _schema_breaks(error: pydantic.ValidationError) -> str:
    """Where and how an answer broke the protocol's schema: pydantic's words without the values
    (the server's text), at most three of them."""
    breaks = [
        f"{'.'.join(map(str, detail['loc']))}: {detail['msg']}"
        for detail in error.errors(include_url=False, include_input=False, include_context=False)
    ]
    more = f"; {len(breaks) - 3} more" if len(breaks) > 3 else ""
    return "; ".join(breaks[:3]) + more


def _with_tail(reason: str, stderr: StderrTail | None) -> str:
    tail = stderr.tail() if stderr is not None else ""
    return f"{reason}; stderr tail: {tail}" if tail else reason


async def _drain(stderr: StderrTail | None) -> None:
    if stderr is not None:
        with anyio.move_on_after(_STDERR_DRAIN_SECONDS):
            await stderr.eof.wait()


@asynccontextmanager
async def _connect(
    transport: StdioTransport | HttpTransport, stderr: StderrTail | None, intake: Intake
) -> AsyncIterator[ClientSession]:
    """An initialized session: what ``mcp.Client(transport)`` does on entering, but for
    ``cache=None`` and no callbacks; the streams go through ``intake``."""
    async with _streams(transport, stderr) as (read_stream, write_stream):
        dispatcher = JSONRPCDispatcher(intake.reader(read_stream), intake.writer(write_stream))
        async with _Session(dispatcher=dispatcher, client_info=_CLIENT_INFO) as session:
            await negotiate_auto(session)
            yield session


class _Session(ClientSession):
    """The SDK's session without its check of a result against the tool's output schema.

    It ran jsonschema on the event loop, a ``pattern`` with ``re`` (holding the GIL, no time
    limit): a server's ``^(a|aa)+$`` against 36 characters of its own result froze every task
    of the process for 3 s, each character more 1.6 times longer. The check bought nothing here:
    structured content goes to the model as JSON whatever its shape, and a tool's output is the
    server's to get right.
    """

    async def validate_tool_result(self, name: str, result: mcp_types.CallToolResult) -> None:
        return None


def _transport(
    name: str, config: McpServerConfig, stderr: StderrTail | None, intake: Intake
) -> StdioTransport | HttpTransport:
    if stderr is None:
        assert config.url is not None
        return HttpTransport(name, config.url, config, intake)
    assert config.command is not None
    params = StdioServerParameters(
        command=config.command,
        args=config.args,
        # The SDK's safe default (HOME, PATH, ... and nothing else) plus the entry's own
        # env: our environment holds provider API keys that no MCP server may read.
        env={**get_default_environment(), **config.env},
        cwd=config.cwd,
    )
    return StdioTransport(name, params, stderr.writer, config.max_message_bytes, intake)


@asynccontextmanager
async def _streams(
    transport: StdioTransport | HttpTransport, stderr: StderrTail | None
) -> AsyncIterator[Any]:
    if stderr is None:
        async with transport.streams() as streams:
            yield streams
        return
    try:
        async with transport.streams() as streams:
            # Our copy of the pipe's write end must go, or the reader never sees end-of-file.
            stderr.close_writer()
            yield streams
    finally:
        stderr.close_writer()


async def _list_tools(server: str, client: ClientSession, budget: int) -> list[ToolSpec]:
    """The server's tools, page after page, until the listing passes ``budget`` characters
    (names, descriptions and input schemas as JSON), :data:`MAX_LISTED_TOOLS` tools or
    :data:`_MAX_TOOL_PAGES` pages: each
    page is bounded as a message, but 100 pages of 16 MiB were all kept (``/health`` holds
    them)."""
    tools: list[ToolSpec] = []
    cursor: str | None = None
    size = 0
    for pages in range(1, _MAX_TOOL_PAGES + 1):
        page = await client.list_tools(params=mcp_types.PaginatedRequestParams(cursor=cursor))
        for tool in page.tools:
            spec = ToolSpec(server=server, name=tool.name, description=tool.description or "",
                            input_schema=dict(tool.input_schema))
            tools.append(spec)
            size += len(spec.name) + len(spec.description) + len(
                json.dumps(spec.input_schema, ensure_ascii=False, separators=(",", ":")))
        cursor = page.next_cursor
        if cursor is None:
            return tools
        if len(tools) >= MAX_LISTED_TOOLS:
            logger.warning("MCP server %r: tools/list stopped after %d pages: %d tools listed (at"
                           " most %d); the rest are not offered", server, pages, len(tools),
                           MAX_LISTED_TOOLS)
            return tools[:MAX_LISTED_TOOLS]
        if size > budget:
            logger.warning(
                "MCP server %r: tools/list stopped after %d pages: %d characters of tools listed"
                " (at most %d, max_message_bytes); the rest are not offered",
                server, pages, size, budget,
            )
            return tools
    logger.warning("MCP server %r: tools/list still paginating after %d pages; the rest are not"
                   " offered", server, _MAX_TOOL_PAGES)
    return tools
