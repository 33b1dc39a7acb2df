"""The streamable-HTTP transport: the SDK's, with every answer bounded and nothing logged whole.

What the SDK's transport (``mcp.client.streamable_http``) did with a hostile server, and what
this one does instead:

- **Size.** A JSON body was read whole (a 2 MB answer under a 1 MiB limit; 100 MB of gzip
  zeros took 960 MB), an event stream was cut at 1 MiB per event whatever the configured limit,
  and the cut read as a dead server. Here every response body the client reads is counted as it
  arrives: a JSON body, or one server-sent event (its bytes before the empty line that ends it,
  field names and line ends counted, :data:`EVENT_FRAMING_BYTES` allowed for them), may have
  ``max_message_bytes``; one byte more ends the session with :attr:`HttpTransport.fault`, as
  over stdio. So does a message of more JSON values than
  :data:`~actors.mcp._intake.MAX_MESSAGE_VALUES`, counted before it is parsed. A compressed
  body is refused (we ask for ``identity``): its size is not what arrives.
- **Errors of its own.** An answer the transport gives up on (its stream ended or broke, the
  request failed) is marked :data:`STREAM_LOST`, so that a server's own error of code -32000
  (JSON-RPC's "server error", which the SDK also uses for a closed connection) is a tool error.
- **Logs.** An event or body that is not JSON-RPC was logged with a traceback quoting it; the
  session id at INFO; each event of an unknown type with its name. Here the first of a session
  is logged with its size only, the rest dropped without a word.
- **Streams it never closed.** Under the 2025 protocol a call the caller gave up on kept its
  response stream open (a server sending a comment now and then held it for ever, one more per
  timed-out call), and a stream that ended after an event id was resumed with GETs paced by
  the server's ``retry`` (``0``: a loop of thousands per second, after the call was over), each
  one a frame more of recursion holding its ended response open. Here an abandoned call's
  stream is closed, and a stream is resumed (the protocol's polling: a server may end a long
  call's stream and expect a GET naming the last event id) in a loop, waiting at least
  :data:`RESUME_FLOOR_SECONDS` before each GET, for as long as its call runs. The GET stream
  for messages a server sends unasked is not opened (a client may do without it): we read none
  of them.
- **How long a call waits.** The read timeout was ``call_timeout + 30 s`` for every request,
  whatever the call's own timeout (a chat passes ``chat.tool_timeout`` with each call): a tool
  silent for longer (a JSON answer sends nothing until it is done) failed as a lost connection
  and the server was restarted. Here a call made inside :func:`call_wait` (``McpSession``'s
  ``call_tool`` makes each one there) reads with a timeout of its own wait plus
  :data:`READ_MARGIN_SECONDS`, set on each of its requests (the POST, a resuming GET) as it is
  sent: the caller's deadline, not the transport's, ends a silent call. Requests outside one
  (start-up: ``initialize``, ``tools/list``, under ``startup_timeout``) keep
  ``call_timeout + 30 s``.
- **Replies and notifications.** The SDK POSTs each of our replies to a server's request, and
  each notification, inline in its one writer loop: a server that never answered those POSTs
  held every later message, tool calls included, for the read timeout per reply. Here each is
  POSTed in a task of its own, given up after :data:`ONE_WAY_SECONDS`, at most
  :data:`MAX_ONE_WAY_POSTS` at once (the others are dropped, the first of a session logged);
  only ``notifications/initialized`` stays inline (the server must have it before our next
  request), bounded the same.
- **Connections.** The client kept httpx's default pool of 100: with ``max_concurrent_calls``
  110, the 10 calls past the 100th waited for a connection, and failed once that wait passed
  their timeout. Here the pool holds (and keeps alive) one connection per call that may run,
  one per one-way POST, and :data:`SPARE_CONNECTIONS` for the session's own requests
  (:func:`connection_limits`).

The SDK's transport class does the rest (sessions, protocol-version headers, same-origin
redirects); the methods overridden are private (``mcp>=2.3,<3``; ``tests/mcp/test_review4_http.py``
checks that they still exist with the same parameters, and a test of each one's behaviour fails
without it).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, Final

import anyio
import httpx2
import mcp_types
from anyio.abc import TaskGroup
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError

from ._config import McpServerConfig
from ._intake import VALUES_FAULT, Intake, too_many_values
from ._sdk import (
    DEFAULT_RECONNECTION_DELAY_MS,
    LAST_EVENT_ID,
    MCP_SESSION_ID,
    SessionMessage,
    StreamableHTTPTransport,
    cancelled_request_id_from_params,
    create_context_streams,
)

__all__ = [
    "EVENT_FRAMING_BYTES",
    "MAX_ONE_WAY_POSTS",
    "ONE_WAY_SECONDS",
    "READ_MARGIN_SECONDS",
    "RESUME_FLOOR_SECONDS",
    "SPARE_CONNECTIONS",
    "STREAM_LOST",
    "HttpTransport",
    "call_wait",
    "connection_limits",
]

logger = logging.getLogger(__name__)

#: Bytes an event may have beyond ``max_message_bytes``: ``data: ``, an ``id`` and ``event``
#: line, line ends.
EVENT_FRAMING_BYTES: Final = 1024
#: A call's response stream is resumed at most this often, whatever the server's ``retry``.
RESUME_FLOOR_SECONDS: Final = 0.5
#: How long closing a session may wait for the server to acknowledge it (``DELETE``).
_TERMINATE_SECONDS: Final = 2.0
#: A request's read timeout beyond its call's wait (and beyond ``call_timeout`` at start-up).
READ_MARGIN_SECONDS: Final = 30.0
#: How long the POST of one reply or notification may take (a server answers it ``202`` at once).
ONE_WAY_SECONDS: Final = 5.0
#: Replies and notifications being POSTed at most; the others are dropped. As many as a
#: server's requests we hold unanswered (``MAX_SERVER_REQUESTS``).
MAX_ONE_WAY_POSTS: Final = 16
#: Connections beyond the calls and the one-way POSTs: the session's ``DELETE`` at the end while
#: calls are still being given up, a resuming GET opened while its call's POST is closing.
SPARE_CONNECTIONS: Final = 4

_call_wait: ContextVar[float | None] = ContextVar("mcp_http_call_wait", default=None)


@contextmanager
def call_wait(seconds: float) -> Iterator[None]:
    """Inside: a call that waits ``seconds`` for its answer; its HTTP requests read for up to
    ``seconds`` + :data:`READ_MARGIN_SECONDS` (the SDK sends them in the caller's context)."""
    token = _call_wait.set(seconds)
    try:
        yield
    finally:
        _call_wait.reset(token)


def connection_limits(config: McpServerConfig) -> httpx2.Limits:
    """The pool of one server's client: a connection for each call that may run at once
    (``max_concurrent_calls``: each holds its answer's stream), each one-way POST and
    :data:`SPARE_CONNECTIONS`, all kept alive (the next calls reuse them)."""
    connections = config.max_concurrent_calls + MAX_ONE_WAY_POSTS + SPARE_CONNECTIONS
    return httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)


_EMPTY_LINE: Final = re.compile(rb"\n\n|\r\r|\n\r")


class _Lost:
    def __repr__(self) -> str:
        return "STREAM_LOST"


STREAM_LOST: Final = _Lost()
"""The ``data`` of an error this transport made up for a request whose answer cannot come (no
server can send it: it is not JSON)."""


class _Refused(httpx2.StreamError):
    """A response body broke a bound. A ``StreamError``: the SDK's transport contains those to
    the one request (a ``TransportError`` out of some of its paths would end every one)."""


class HttpTransport:
    """One streamable-HTTP server and the streams the SDK's session reads and writes."""

    def __init__(self, server: str, url: str, config: McpServerConfig, intake: Intake) -> None:
        self._server = server
        self._intake = intake
        self._url = url
        self._config = config
        self._garbage_seen = False
        self._tasks: TaskGroup | None = None  # the streams': one-way POSTs run there
        self._one_way = 0  # one-way POSTs running
        self._dropped_any = False
        self.fault: str | None = None
        """Why the session cannot go on, when the server broke a limit or forgot the session
        (``None``: it did not)."""

    @asynccontextmanager
    async def streams(self) -> AsyncIterator[tuple[Any, Any]]:
        """Yield ``(read_stream, write_stream)`` for ``ClientSession``; what the SDK's
        ``streamable_http_client`` does, with our :class:`_Transport` and no GET stream.

        On exit the server is told the session ended (``DELETE``), waiting
        :data:`_TERMINATE_SECONDS` at most.
        """
        config = self._config
        # Outside a call (start-up); a call's requests read for its own wait (_time).
        timeout = httpx2.Timeout(30.0, read=config.call_timeout + READ_MARGIN_SECONDS)
        headers = {**config.headers, "Accept-Encoding": "identity"}
        transport = _Transport(self._url, self)
        async with httpx2.AsyncClient(
            headers=headers, timeout=timeout, limits=connection_limits(config),
            event_hooks={"request": [self._time], "response": [self._bound]},
        ) as http:
            read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
            write_stream, write_reader = create_context_streams[SessionMessage](0)
            async with (
                read_writer, read_stream, write_stream, write_reader,
                anyio.create_task_group() as tg,
            ):
                self._tasks = tg
                tg.start_soon(
                    transport.post_writer, http, write_reader, read_writer, write_stream,
                    _no_get_stream, tg,
                )
                try:
                    yield read_stream, write_stream
                finally:
                    with anyio.move_on_after(_TERMINATE_SECONDS, shield=True):
                        if transport.session_id:
                            await transport.terminate_session(http)
                    self._tasks = None  # the one-way POSTs still held end here
                    tg.cancel_scope.cancel()

    async def _time(self, request: httpx2.Request) -> None:
        """Every request, as it is sent: inside a call, its read timeout is the call's."""
        wait = _call_wait.get()
        if wait is not None:
            timeouts = request.extensions.get("timeout", {})
            request.extensions["timeout"] = {**timeouts, "read": wait + READ_MARGIN_SECONDS}

    def post_later(self, post: Callable[[Any], Awaitable[None]], ctx: Any) -> None:
        """``post(ctx)`` (a reply or notification) in a task of its own, given up after
        :data:`ONE_WAY_SECONDS`; dropped while :data:`MAX_ONE_WAY_POSTS` are running."""
        if self._tasks is None:
            return  # not open
        if self._one_way >= MAX_ONE_WAY_POSTS:
            if not self._dropped_any:
                self._dropped_any = True
                logger.warning(
                    "MCP server %r holds %d of our replies and notifications unanswered; this"
                    " session drops the others while it does, without a word",
                    self._server, MAX_ONE_WAY_POSTS,
                )
            return
        self._one_way += 1
        self._tasks.start_soon(self._post_one_way, post, ctx)

    async def _post_one_way(self, post: Callable[[Any], Awaitable[None]], ctx: Any) -> None:
        try:
            with anyio.move_on_after(ONE_WAY_SECONDS):
                await post(ctx)
        finally:
            self._one_way -= 1

    async def _bound(self, response: httpx2.Response) -> None:
        """Every response, as its headers arrive: its body bounded as it is read."""
        if response.status_code == 404 and MCP_SESSION_ID in response.request.headers:
            # The server no longer knows our session: the protocol says start a new one.
            self._broke("no longer knows its session (HTTP 404 for the session id)")
        content_type = response.headers.get("content-type", "").lower()
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        response.stream = _BoundedBody(
            response.stream, self,
            limit=self._config.max_message_bytes,
            events=content_type.startswith("text/event-stream"),
            encoding=None if encoding in ("", "identity") else encoding,
        )

    def _broke(self, fault: str) -> None:
        if self.fault is None:
            self.fault = fault

    def _not_json_rpc(self, size: int) -> None:
        if not self._garbage_seen:
            self._garbage_seen = True
            logger.warning(
                "MCP server %r sent an answer that is not a JSON-RPC message (%d bytes, not"
                " shown); this session's later ones are dropped without a word",
                self._server, size,
            )


class _BoundedBody(httpx2.AsyncByteStream):
    """A response body that fails (and ends the session) past its bound."""

    def __init__(self, inner: Any, owner: HttpTransport, *, limit: int, events: bool,
                 encoding: str | None) -> None:
        self._inner = inner
        self._owner = owner
        self._limit = limit + EVENT_FRAMING_BYTES if events else limit
        self._events = events
        self._encoding = encoding
        self._size = 0  # of the body, or of the event being read
        self._last = b""  # the previous chunk's last byte: an empty line may straddle chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            if self._encoding is not None and chunk:
                self._owner._broke(
                    f"sent a body compressed with {self._encoding[:40]!r} when asked for"
                    " 'identity' (its size cannot be bounded as it arrives)"
                )
                raise _Refused("compressed body")
            self._count(chunk)
            if self._size > self._limit:
                self._owner._broke(
                    "sent a message longer than max_message_bytes"
                    f" ({self._owner._config.max_message_bytes} bytes)"
                )
                raise _Refused("message too long")
            yield chunk

    def _count(self, chunk: bytes) -> None:
        if not self._events:
            self._size += len(chunk)
            return
        # An event ends at an empty line: two line ends in a row (CR, LF or CRLF each), which
        # is exactly where "\n\n", "\r\r" or "\n\r" occurs. Split in C, not a Python loop
        # over the lines; the first piece goes on with the event before, the last starts one.
        before = self._last
        pieces = _EMPTY_LINE.split(before + chunk)
        self._last = chunk[-1:] or before
        if len(pieces) == 1:
            self._size += len(chunk)
            return
        # Past the limit, the size of the longest event read; else that of the one begun.
        ended = self._size + len(pieces[0]) - len(before)
        longest = max(ended, max(map(len, pieces[1:-1]), default=0))
        self._size = longest if longest > self._limit else len(pieces[-1])

    async def aclose(self) -> None:
        await self._inner.aclose()


def _no_get_stream() -> None:
    """Where the SDK would start the GET stream (messages the server sends unasked)."""


class _Transport(StreamableHTTPTransport):
    """The SDK's transport with the overrides the module docstring explains."""

    def __init__(self, url: str, owner: HttpTransport) -> None:
        # The SDK's own event bound, behind ours (which counts more of an event, so trips first).
        super().__init__(
            url, max_sse_event_size=owner._config.max_message_bytes + EVENT_FRAMING_BYTES
        )
        self._owner = owner

    def _maybe_extract_session_id_from_response(self, response: httpx2.Response) -> None:
        session_id = response.headers.get(MCP_SESSION_ID)
        if session_id:
            self.session_id = session_id  # not logged: it names our session to the server

    async def _handle_post_request(self, ctx: Any) -> None:
        # The SDK awaits a request's POST in a task of its own, any other message's in its one
        # writer loop, which sends nothing else meanwhile.
        message = ctx.session_message.message
        if isinstance(message, mcp_types.JSONRPCRequest):
            await self.post(ctx)
        elif (isinstance(message, mcp_types.JSONRPCNotification)
              and message.method == "notifications/initialized"):
            with anyio.move_on_after(ONE_WAY_SECONDS):
                await self.post(ctx)
        else:
            self._owner.post_later(self.post, ctx)

    async def post(self, ctx: Any) -> None:
        """POST one message as the SDK does; a failure ends its request only."""
        try:
            await super()._handle_post_request(ctx)
        except (httpx2.HTTPError, _Refused) as exc:
            # Out of this task the error would end the transport, and every call with it.
            message = ctx.session_message.message
            if isinstance(message, mcp_types.JSONRPCRequest):
                await self._resolve_abandoned_request(
                    ctx.read_stream_writer, message.id, f"HTTP request failed: {exc!r}"
                )

    async def _handle_json_response(
        self, response: httpx2.Response, read_stream_writer: Any, *, request_id: Any
    ) -> None:
        try:
            content = await response.aread()
        except _Refused:
            await self._resolve_abandoned_request(
                read_stream_writer, request_id, self._owner.fault or "answer refused"
            )
            return
        if too_many_values(content):
            self._owner._broke(f"sent {VALUES_FAULT}")
            await self._resolve_abandoned_request(
                read_stream_writer, request_id, self._owner.fault or VALUES_FAULT
            )
            return
        try:
            message = mcp_types.jsonrpc_message_adapter.validate_json(content, by_name=False)
        except ValidationError:
            self._owner._not_json_rpc(len(content))
            message = _error(request_id, PARSE_ERROR, "the answer is not a JSON-RPC message")
        if not isinstance(message, mcp_types.JSONRPCResponse | JSONRPCError):
            message = _error(request_id, INVALID_REQUEST, "the answer is not a JSON-RPC response")
        # The body of this request's POST answers this request, whatever id it names (as the
        # SDK reads an event stream): a server cannot answer another call through it.
        message.id = request_id
        self._owner._intake.admit(message)  # an answer: always admitted, its content bounded
        await read_stream_writer.send(SessionMessage(message))

    async def _handle_sse_event(
        self, sse: httpx2.ServerSentEvent, read_stream_writer: Any,
        original_request_id: Any = None, resumption_callback: Any = None,
    ) -> bool:
        if sse.event != "message" or not sse.data:
            return False  # another type, or a priming event: nothing we read
        if too_many_values(sse.data):
            self._owner._broke(f"sent {VALUES_FAULT}")
            if original_request_id is not None:
                await self._resolve_abandoned_request(
                    read_stream_writer, original_request_id, self._owner.fault or VALUES_FAULT
                )
            return True  # nothing more of this stream is read
        try:
            message = mcp_types.jsonrpc_message_adapter.validate_json(sse.data, by_name=False)
        except ValidationError:
            self._owner._not_json_rpc(len(sse.data))
            return False
        answer = isinstance(message, mcp_types.JSONRPCResponse | JSONRPCError)
        if isinstance(message, mcp_types.JSONRPCResponse | JSONRPCError) and (
            original_request_id is not None
        ):
            message.id = original_request_id  # as the SDK does: this POST's stream answers it
        if self._owner._intake.admit(message):
            await read_stream_writer.send(SessionMessage(message))
        return answer

    async def _handle_reconnection(
        self, ctx: Any, last_event_id: str, retry_interval_ms: int | None = None,
        attempt: int = 0,
    ) -> None:
        # Inside this call's POST task and abort scope: a call given up ends its resumes too.
        # A failed GET ends the call as any failed request does (in _handle_post_request).
        request_id = ctx.session_message.message.id
        retry = DEFAULT_RECONNECTION_DELAY_MS if retry_interval_ms is None else retry_interval_ms
        while True:
            await anyio.sleep(max(retry / 1000, RESUME_FLOOR_SECONDS))
            headers = {**self._prepare_headers(), "accept": "text/event-stream",
                       LAST_EVENT_ID: last_event_id}
            async with ctx.client.stream(
                "GET", self.url, headers=headers, follow_redirects=False
            ) as response:
                content_type = response.headers.get("content-type", "").lower()
                if response.status_code != 200 or not content_type.startswith(
                    "text/event-stream"
                ):
                    await self._resolve_abandoned_request(
                        ctx.read_stream_writer, request_id,
                        "the server ended its response stream without an answer and refused to"
                        f" resume it (HTTP {response.status_code})",
                    )
                    return
                events = httpx2.EventSource(response, max_event_size=self.max_sse_event_size)
                async for sse in events:
                    last_event_id = sse.id or last_event_id
                    retry = retry if sse.retry is None else sse.retry
                    if await self._handle_sse_event(sse, ctx.read_stream_writer, request_id):
                        return

    async def _resolve_abandoned_request(
        self, read_stream_writer: Any, request_id: Any, message: str, *,
        code: int = CONNECTION_CLOSED,
    ) -> None:
        if code != CONNECTION_CLOSED:
            await super()._resolve_abandoned_request(
                read_stream_writer, request_id, message, code=code
            )
            return
        error = SessionMessage(JSONRPCError(
            jsonrpc="2.0", id=request_id,
            error=ErrorData(code=CONNECTION_CLOSED, message=message, data=STREAM_LOST),
        ))
        # A closed stream: the session is closing, nobody waits for the answer.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await read_stream_writer.send(error)

    def _consume_modern_cancellation(self, session_message: SessionMessage) -> bool:
        consumed = super()._consume_modern_cancellation(session_message)
        if not consumed:
            # A 2025-era call's cancel goes out as a notification, and the SDK kept reading the
            # call's response stream: close it too, we will not read the answer.
            message = session_message.message
            if (isinstance(message, mcp_types.JSONRPCNotification)
                    and message.method == "notifications/cancelled"):
                request_id = cancelled_request_id_from_params(message.params)
                post = self._in_flight_posts.get(request_id) if request_id is not None else None
                if post is not None:
                    post.scope.cancel()
        return consumed


def _error(request_id: Any, code: int, message: str) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=request_id,
                        error=ErrorData(code=code, message=message))
