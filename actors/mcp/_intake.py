"""What a server sends, screened before the SDK's dispatcher reads it (either transport).

The dispatcher reads everything a server writes and spawns a task per notification and per
request, without bound: measured over stdio, 100,000 progress notifications took 14 s of the
event loop (the SDK validated each against its schema, to hand it to a callback that does
nothing), 100,000 ``ping`` requests grew the process to 1 GB of tasks waiting to answer, and
each malformed notification was logged with a traceback quoting it (a secret in it included:
1,000 of them made 2.3 MB of log). So each transport asks :meth:`Intake.admit` about every
message it parsed, before handing it over:

- **Notifications are dropped unread.** No handler of ours reads one (progress, log messages,
  list changes: the catalog is the start-time listing), so nothing is lost; a handler added
  later must let its notification through here.
- **A server's requests are bounded:** at most :data:`MAX_SERVER_REQUESTS` unanswered at once
  (``ping``, and the ``sampling`` / ``roots`` / ``elicitation`` requests we refuse); the others
  are dropped unanswered, the first of a session logged.
- **A tool listing is bounded:** the first :data:`MAX_LISTED_TOOLS` tools of a page are read, the
  others and any further page dropped (300,000 tools in one 16 MiB listing were all validated
  by the SDK and kept, 309 MB, with 3.2 MB of their names in every ``/health``; the catalog
  offers 128 tools at most, in all).
- **A message's values are bounded,** counted before it is parsed (:func:`too_many_values`,
  called by the transports): past :data:`MAX_MESSAGE_VALUES` the session ends with a fault, as
  past ``max_message_bytes``. Parsing builds a Python object per JSON value: a 16 MiB listing
  of 300,000 tools held the event loop 2.0 s, 3,000,000 one-character strings in 15 MB 1.2 s,
  before anything here could cut them.
- **A tool result's content blocks are bounded:** the first :data:`MAX_CONTENT_BLOCKS` are read,
  the others replaced by a note (the SDK made a model of each on the event loop: 300,000 blocks
  of one character, 12 MB, froze it for 6 s per call; the model reads a few thousand
  characters of a result anyway).

And the streams the dispatcher reads and writes (:meth:`Intake.reader`, :meth:`Intake.writer`)
count our answers and note the end of the connection (:attr:`Intake.ended`) before the
dispatcher hears of it, so an error of code ``CONNECTION_CLOSED`` that came before is known to
be the server's own.
"""

from __future__ import annotations

import logging
import re
from types import TracebackType
from typing import Any, Final, Generic, TypeVar

import anyio
import mcp_types

from ._sdk import SessionMessage

__all__ = [
    "MAX_CONTENT_BLOCKS",
    "MAX_LISTED_TOOLS",
    "MAX_MESSAGE_VALUES",
    "MAX_SERVER_REQUESTS",
    "VALUES_FAULT",
    "Intake",
    "too_many_values",
]

logger = logging.getLogger(__name__)

#: A server's requests we hold unanswered at most; the others are dropped.
MAX_SERVER_REQUESTS: Final = 16
#: Content blocks of a tool result read at most; the others are replaced by a note.
MAX_CONTENT_BLOCKS: Final = 1000
#: Tools of a server read at most (over all its pages); the others are dropped unread.
MAX_LISTED_TOOLS: Final = 16_384

#: JSON values one message may hold, counted before it is parsed (:func:`too_many_values`):
#: parsing costs ~0.15-0.4 us a value (a string, number, object...), so ~0.1 s at most. A
#: listing of 20,000 tools of a minimal schema holds ~120,000.
MAX_MESSAGE_VALUES: Final = 262_144
VALUES_FAULT: Final = f"a message of more than {MAX_MESSAGE_VALUES} JSON values"

# A JSON string, escapes included (unrolled: one pass, no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)

_Stream = TypeVar("_Stream")


def too_many_values(message: bytes | str) -> bool:
    """Whether a server's ``message`` (raw JSON) holds more than :data:`MAX_MESSAGE_VALUES`
    values, told without parsing it. Each value but the first of an array or object follows a
    comma, and each object or array opens with a bracket, so commas and brackets count them;
    counted in C over the raw text first, the strings' own included. Only past the bound
    (a tool's text may be commas) are they counted again outside the strings, after the strings
    themselves (quotes less escaped ones, halved) are found within it: the regex that drops
    them then matches at most that many."""
    raw = message.encode() if isinstance(message, str) else message  # ~1 ms a MB
    if raw.count(b",") + raw.count(b"{") + raw.count(b"[") <= MAX_MESSAGE_VALUES:
        return False
    if (raw.count(b'"') - raw.count(b'\\"')) // 2 > MAX_MESSAGE_VALUES:
        return True
    bare, strings = _STRING.subn(b"", raw)
    return strings + bare.count(b",") + bare.count(b"{") + bare.count(b"[") > MAX_MESSAGE_VALUES


class Intake:
    """The screen between one session's transport and the SDK's dispatcher."""

    def __init__(self, server: str) -> None:
        self._server = server
        self._unanswered = 0  # server requests let through, less our answers sent
        self._refused_any = False
        self.ended = False
        """The transport's streams ended (either way): the connection is gone."""

    def reader(self, stream: Any) -> _ScreenedReader:
        """``stream`` (the transport's read stream), its end noted in :attr:`ended`."""
        return _ScreenedReader(self, stream)

    def writer(self, stream: Any) -> _AnswerCounter:
        """``stream`` (the transport's write stream), our answers to the server counted."""
        return _AnswerCounter(self, stream)

    def admit(self, message: mcp_types.JSONRPCMessage) -> bool:
        """Whether the dispatcher should see ``message``, which the server sent."""
        if isinstance(message, mcp_types.JSONRPCNotification):
            return False
        if isinstance(message, mcp_types.JSONRPCRequest):
            if self._unanswered >= MAX_SERVER_REQUESTS:
                self._refuse()
                return False
            self._unanswered += 1
        elif isinstance(message, mcp_types.JSONRPCResponse):
            # Only a tools/call result has "content" among the answers to what we ask.
            content = message.result.get("content")
            if isinstance(content, list) and len(content) > MAX_CONTENT_BLOCKS:
                note = f"[{len(content) - MAX_CONTENT_BLOCKS} more content blocks, not read]"
                message.result["content"] = [*content[:MAX_CONTENT_BLOCKS],
                                             {"type": "text", "text": note}]
            # And only a tools/list result has "tools".
            tools = message.result.get("tools")
            if isinstance(tools, list) and len(tools) > MAX_LISTED_TOOLS:
                self._cut_listing(message.result, len(tools))
        return True

    def _cut_listing(self, result: dict[str, Any], listed: int) -> None:
        result["tools"] = result["tools"][:MAX_LISTED_TOOLS]
        result.pop("nextCursor", None)
        logger.warning(
            "MCP server %r listed %d tools; the first %d are read, the rest and any further page"
            " are not", self._server, listed, MAX_LISTED_TOOLS,
        )

    def _answered(self, item: SessionMessage) -> None:
        if isinstance(item.message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
            self._unanswered = max(0, self._unanswered - 1)

    def _refuse(self) -> None:
        if not self._refused_any:
            self._refused_any = True
            logger.warning(
                "MCP server %r sent more than %d requests to answer at once; this session drops"
                " the others unanswered without a word", self._server, MAX_SERVER_REQUESTS,
            )

    def __repr__(self) -> str:
        state = "ended" if self.ended else "open"
        return f"<Intake {self._server!r} [{self._unanswered} unanswered | {state}]>"


class _Wrapper(Generic[_Stream]):
    def __init__(self, intake: Intake, stream: _Stream) -> None:
        self._intake = intake
        self._stream = stream

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _ScreenedReader(_Wrapper[Any]):
    """The read-stream protocol the dispatcher uses; its end is noted first."""

    @property
    def last_context(self) -> Any:
        # The HTTP transport's streams carry each message's sending context (the dispatcher
        # runs a handler in it).
        return getattr(self._stream, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._intake.ended = True
            raise
        return item

    def __aiter__(self) -> _ScreenedReader:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class _AnswerCounter(_Wrapper[Any]):
    """The write-stream protocol the dispatcher uses; an answer frees a server request's slot."""

    async def send(self, item: SessionMessage) -> None:
        try:
            await self._stream.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._intake.ended = True
            raise
        self._intake._answered(item)
