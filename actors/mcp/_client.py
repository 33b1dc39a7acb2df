"""A thin, well-behaved wrapper over the ``mcp`` SDK client, for the McpServerActor.

It uses only the SDK's public modules, and translates the SDK's errors into ours (the tree is in
:mod:`actors.mcp._errors`). A tool that *runs* and reports failure (``isError``) is not an
exception: ``call_tool`` returns a ``ToolResult`` with ``is_error=True`` so the model can read the
message and correct itself.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TextIO

import anyio
import httpx2
import jsonschema  # type: ignore[import-untyped]  # a dependency of mcp, shipped without types
import mcp_types
import regex  # type: ignore[import-untyped]  # a dependency of tiktoken: matches with a timeout
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp.client import Transport
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from ._config import McpServerConfig
from ._errors import McpError, McpServerError, McpToolError, McpToolTimeout

__all__ = [
    "McpError",
    "McpServerError",
    "McpSession",
    "McpToolError",
    "McpToolTimeout",
    "ToolResult",
    "ToolSpec",
    "exposed_tool_names",
    "open_mcp_session",
    "validate_arguments",
]

logger = logging.getLogger(__name__)

_CLIENT_INFO: Final = mcp_types.Implementation(name="mcp-backend", version="0.1.0")
# A server that paginates forever must not hang start-up.
_MAX_TOOL_PAGES: Final = 100
_STDERR_TAIL_BYTES: Final = 2000
# After a failed start, how long to wait for the last stderr bytes of the dead process.
_STDERR_DRAIN_SECONDS: Final = 0.5
_OPENAI_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_VALIDATION_MESSAGES: Final = 5


@dataclass(frozen=True)
class ToolSpec:
    """One tool offered by an MCP server, as listed at start-up."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]

    def to_openai_tool(self, exposed_name: str) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this tool, under the name the model sees."""
        parameters = self.input_schema or {"type": "object", "properties": {}}
        return {
            "type": "function",
            "function": {
                "name": exposed_name,
                "description": self.description,
                "parameters": parameters,
            },
        }


@dataclass(frozen=True)
class ToolResult:
    """The outcome of a tool call that reached the tool (``is_error`` if the tool reported one)."""

    text: str
    structured: dict[str, Any] | None
    is_error: bool

    def as_tool_message_content(self) -> str:
        """What goes back to the model: the text, else the structured content as JSON."""
        if self.text:
            return self.text
        if self.structured is not None:
            return json.dumps(self.structured, ensure_ascii=False)
        return "(the tool returned no content)"

    def preview(self, n: int = 200) -> str:
        """The first ``n`` characters of the model-facing content, on one line."""
        flat = " ".join(self.as_tool_message_content().split())
        return flat if len(flat) <= n else flat[: max(n - 1, 0)] + "…"

    @classmethod
    def from_call_result(cls, result: mcp_types.CallToolResult) -> ToolResult:
        """Flatten an SDK result: text joined, other content described, structured kept."""
        parts = [_describe_content(block) for block in result.content]
        structured = result.structured_content
        if structured is not None and not isinstance(structured, dict):
            structured = {"result": structured}
        return cls(text="\n".join(parts), structured=structured, is_error=result.is_error)


def _describe_content(block: mcp_types.ContentBlock) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return f"[{block.mime_type} {_base64_size(block.data)} bytes]"
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return resource.text
        mime = resource.mime_type or "application/octet-stream"
        return f"[{mime} {_base64_size(resource.blob)} bytes from {resource.uri}]"
    return f"[resource link {block.uri}]"


def _base64_size(data: str) -> int:
    stripped = data.rstrip("=")
    return len(stripped) * 3 // 4


class McpSession:
    """An initialized connection to one MCP server; made by ``open_mcp_session``.

    ``call_tool`` may be called from several tasks at once (requests are multiplexed).
    """

    def __init__(
        self,
        name: str,
        config: McpServerConfig,
        client: Client,
        tools: list[ToolSpec],
        pid: int | None,
        stderr: _StderrTail | None,
    ) -> None:
        self.name = name
        self.tools = tools
        self.pid = pid
        self.server_info: mcp_types.Implementation | None = client.server_info
        self.protocol_version = client.protocol_version
        self._config = config
        self._client = client
        self._stderr = stderr
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the ``open_mcp_session`` block has exited."""
        return self._closed

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
                result = await self._client.call_tool(name, arguments)
        except TimeoutError:
            raise McpToolTimeout(self.name, name, limit) from None
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                raise McpServerError(self.name, self._died_reason()) from exc
            if exc.code == REQUEST_TIMEOUT:
                raise McpToolTimeout(self.name, name, limit) from exc
            raise McpToolError(
                f"Tool {name!r} was rejected by the server: {exc.message}",
                server=self.name,
                tool=name,
            ) from exc
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise McpServerError(self.name, f"connection failed: {exc!r}") from exc
        except httpx2.HTTPError as exc:
            raise McpServerError(self.name, f"HTTP request failed: {exc!r}") from exc
        except RuntimeError as exc:
            # The SDK raises RuntimeError for a result that breaks the tool's output schema.
            raise McpToolError(
                f"Tool {name!r} returned an invalid result: {exc}", server=self.name, tool=name
            ) from exc
        return ToolResult.from_call_result(result)

    def _died_reason(self) -> str:
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
    stderr = _StderrTail(name) if config.transport == "stdio" else None
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
                    client = Client(
                        _transport(config, stderr), cache=None, client_info=_CLIENT_INFO
                    )
                    async with client:
                        tools = await _list_tools(name, client)
                        pid = stderr.find_child_pid() if stderr is not None else None
                        session = McpSession(name, config, client, tools, pid, stderr)
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
    if isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED:
        return "exited during start-up"
    if isinstance(exc, MCPError):
        return f"failed to initialize: {exc.message}"
    return f"could not be reached during start-up: {exc!r}"


def _with_tail(reason: str, stderr: _StderrTail | None) -> str:
    tail = stderr.tail() if stderr is not None else ""
    return f"{reason}; stderr tail: {tail}" if tail else reason


async def _drain(stderr: _StderrTail | None) -> None:
    if stderr is not None:
        with anyio.move_on_after(_STDERR_DRAIN_SECONDS):
            await stderr.eof.wait()


def _transport(config: McpServerConfig, stderr: _StderrTail | None) -> Transport:
    if config.transport == "stdio":
        assert config.command is not None and stderr is not None
        params = StdioServerParameters(
            command=config.command,
            args=config.args,
            # The SDK's safe default (HOME, PATH, ... and nothing else) plus the entry's own
            # env: our environment holds provider API keys that no MCP server may read.
            env={**get_default_environment(), **config.env},
            cwd=config.cwd,
        )
        return _stdio_transport(params, stderr)
    assert config.url is not None
    return _http_transport(config.url, config)


@asynccontextmanager
async def _stdio_transport(
    params: StdioServerParameters, stderr: _StderrTail
) -> AsyncIterator[Any]:
    try:
        async with stdio_client(params, errlog=stderr.writer) as streams:
            # Our copy of the pipe's write end must go, or the reader never sees end-of-file.
            stderr.close_writer()
            yield streams
    finally:
        stderr.close_writer()


@asynccontextmanager
async def _http_transport(url: str, config: McpServerConfig) -> AsyncIterator[Any]:
    # The read timeout must outlast a tool call: results may arrive on a quiet SSE stream.
    timeout = httpx2.Timeout(30.0, read=config.call_timeout + 30.0)
    async with (
        httpx2.AsyncClient(headers=config.headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


async def _list_tools(server: str, client: Client) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(
            ToolSpec(
                server=server,
                name=tool.name,
                description=tool.description or "",
                input_schema=dict(tool.input_schema),
            )
            for tool in page.tools
        )
        cursor = page.next_cursor
        if cursor is None:
            return tools
    logger.warning("MCP server %r: tools/list still paginating after %d pages", server, len(tools))
    return tools


class _StderrTail:
    """The server's stderr, through a pipe: logged at DEBUG, its last bytes kept for errors."""

    def __init__(self, server: str) -> None:
        self._server = server
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._read_fd = read_fd
        self._pipe_inode = os.fstat(read_fd).st_ino
        # Handed to the child as its stderr; the SDK wants a TextIO, the child only its fd.
        self.writer: TextIO = os.fdopen(write_fd, "w")
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.eof = anyio.Event()

    def close_writer(self) -> None:
        if not self.writer.closed:
            self.writer.close()

    def close(self) -> None:
        """Close both ends; idempotent (a pump cancelled before it ran never closed its end)."""
        self.close_writer()
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    async def pump(self) -> None:
        """Read until end-of-file (every writer closed) or cancellation, then close the pipe."""
        try:
            while True:
                await anyio.wait_readable(self._read_fd)
                try:
                    data = os.read(self._read_fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    return
                self._record(data)
        finally:
            self.close()
            self.eof.set()

    def _record(self, data: bytes) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            for line in data.decode(errors="replace").splitlines():
                logger.debug("MCP server %r stderr: %s", self._server, line)
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= _STDERR_TAIL_BYTES:
            self._tail_size -= len(self._tail.popleft())

    def tail(self) -> str:
        """The last lines the server wrote to stderr, joined with `` | ``."""
        text = b"".join(self._tail)[-_STDERR_TAIL_BYTES:].decode(errors="replace")
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())

    def find_child_pid(self) -> int | None:
        """The pid of our child process whose stderr is this pipe (Linux ``/proc``), if any.

        The SDK does not expose the process it spawns; the pipe identifies it exactly.
        """
        target = f"pipe:[{self._pipe_inode}]"
        try:
            threads = os.listdir("/proc/self/task")
        except OSError:
            return None
        for thread in threads:
            try:
                with open(f"/proc/self/task/{thread}/children") as children:
                    pids = children.read().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    if os.readlink(f"/proc/{pid}/fd/2") == target:
                        return int(pid)
                except OSError:
                    continue
        return None


def validate_arguments(
    spec: ToolSpec, arguments_json: str, *, deadline: float | None = None
) -> dict[str, Any]:
    """Parse the model's JSON arguments and check them against the tool's input schema.

    An empty string counts as ``{}``. Raises ``McpToolError`` with a message written for the
    model (invalid JSON, not an object, missing property, wrong type, ...). With ``deadline``
    (``time.monotonic()`` seconds), ``pattern`` keywords are matched by the ``regex`` module with
    the GIL released and at most until then: a backtracking pattern fails the arguments instead
    of freezing the process (call it in a worker thread).
    """
    prefix = f"Invalid arguments for tool {spec.name!r}"
    try:
        arguments = json.loads(arguments_json) if arguments_json.strip() else {}
    except json.JSONDecodeError as exc:
        raise McpToolError(
            f"{prefix}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}). "
            "Send a JSON object with the tool's parameters.",
            server=spec.server,
            tool=spec.name,
        ) from None
    if not isinstance(arguments, dict):
        raise McpToolError(
            f"{prefix}: expected a JSON object, got {_json_type(arguments)}.",
            server=spec.server,
            tool=spec.name,
        )
    validator_class = jsonschema.validators.validator_for(spec.input_schema)
    try:
        validator_class.check_schema(spec.input_schema)
    except jsonschema.SchemaError:
        # The server's schema is broken; let the server judge the arguments itself.
        return arguments
    if deadline is not None:
        validator_class = jsonschema.validators.extend(
            validator_class, {"pattern": _bounded_pattern(deadline)}
        )
    errors = sorted(
        validator_class(spec.input_schema).iter_errors(arguments),
        key=lambda error: list(error.absolute_path),
    )
    if errors:
        messages = [_describe_validation_error(e) for e in errors[:_MAX_VALIDATION_MESSAGES]]
        raise McpToolError(f"{prefix}: {'; '.join(messages)}.", server=spec.server, tool=spec.name)
    return arguments


def _bounded_pattern(deadline: float) -> Callable[..., Iterator[Any]]:
    def pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
        if not validator.is_type(instance, "string"):
            return
        shown = instance if len(instance) <= 40 else instance[:39] + "…"
        try:
            found = regex.search(
                pattern, instance, timeout=max(0.0, deadline - time.monotonic()), concurrent=True
            )
        except TimeoutError:
            yield jsonschema.ValidationError(
                f"{shown!r} could not be matched against {pattern!r} in time"
            )
            return
        except regex.error:
            return  # a pattern we cannot read: the server judges the value itself
        if found is None:
            yield jsonschema.ValidationError(f"{shown!r} does not match {pattern!r}")

    return pattern


def _describe_validation_error(error: Any) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    location = f"'{path.lstrip('.')}'" if path else "the arguments"
    if error.validator == "type":
        expected = error.validator_value
        expected_text = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return f"{location} must be of type {expected_text}, got {_json_type(error.instance)}"
    return f"{location}: {error.message}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def exposed_tool_names(tools_by_server: Mapping[str, list[ToolSpec]]) -> dict[str, ToolSpec]:
    """The names the model sees for every tool, mapped to the tool.

    The rule: a tool name offered by exactly one server keeps its name; a name offered by several
    servers becomes ``<server>__<tool>`` on every one of them. Names are then made valid for
    OpenAI (``^[a-zA-Z0-9_-]{1,64}$``: other characters become ``_``, the result is cut to 64
    characters). If two tools still end up with the same name (after sanitizing, or a server
    listing a name twice), the later one, in server then listing order, gets ``_2``, ``_3``, ...
    """
    servers_per_name = Counter(
        name for tools in tools_by_server.values() for name in {spec.name for spec in tools}
    )
    exposed: dict[str, ToolSpec] = {}
    for server, tools in tools_by_server.items():
        for spec in tools:
            clashes = servers_per_name[spec.name] > 1
            base = _sanitize(f"{server}__{spec.name}" if clashes else spec.name)
            candidate = base
            for n in range(2, len(exposed) + 3):
                if candidate not in exposed:
                    break
                suffix = f"_{n}"
                candidate = base[: 64 - len(suffix)] + suffix
            exposed[candidate] = spec
    return exposed


def _sanitize(name: str) -> str:
    if _OPENAI_NAME.match(name):
        return name
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]
    return cleaned or "_"
