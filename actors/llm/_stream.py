"""Reading one upstream stream and relaying its text and reasoning to the caller.

The SDK decodes the SSE (its ``AsyncStream[object]`` yields one ``dict`` per event); each chunk
is read with :func:`~actors.llm._wire_decode.decode_chunk` into a
:class:`~actors.llm._wire_decode.StreamAssembly`, and what it adds goes to the caller's own
delta sink when it gave one (``ChatRequest.deltas``: awaited right here, no task switch), else
to a :class:`Relay` feeding the ``ask_stream``.
Per delta the reader does one msgspec conversion, a few attribute reads and a list append: no
cancel scope, no task switch, no ``isinstance`` against a Protocol.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import httpx2
import openai

from runtime import Request

from ._errors import LLMClientError, LLMStreamingError
from ._messages import DeltaSink, LLMResponse, ReasoningDelta, TextDelta
from ._response_bounds import Stalled, StallWatch
from ._stream_assembly import NoEvent
from ._wire_decode import StreamAssembly, decode_chunk, malformed_error

__all__ = ["Progress", "Relay", "cut_off", "read_stream"]

_NO_EVENT = object()


@dataclass
class Progress:
    """What a call's child task learned, read by the actor even when the call failed."""

    started: float
    ttft: float | None = None
    """Seconds to the first text or tool-call piece."""
    ttfr: float | None = None
    """Seconds to the first reasoning piece."""
    rate_limited: bool = False
    streamed: LLMResponse | None = None  # a stream's final response (its outcome carries none)


class Relay:
    """Forwards a stream's text and reasoning to the caller, joining deltas read close together.

    The SDK yields the events of one network read without suspending; the relay task runs when
    the reader waits for the network, sends the first delta at once, and otherwise at least every
    ``_MAX_DELAY`` seconds: deltas of one kind read meanwhile go out as one item (reasoning and
    text keep their order). Why: each item through the caller's bounded stream costs a few task
    switches, as much as reading a chunk. A reader with ``_MAX_PENDING`` deltas unsent waits for
    the consumer (backpressure).
    """

    _MAX_PENDING = 256
    _MAX_DELAY = 0.002

    def __init__(self, request: Request) -> None:
        self._request = request
        # (is_reasoning, text) in arrival order.
        self._pending: list[tuple[bool, str]] = []
        self._ready = anyio.Event()
        self._drained = anyio.Event()
        self._oldest = 0.0
        self._sent_any = False
        self._finished = False

    async def push(self, text: str, reasoning: bool = False) -> None:
        pending = self._pending
        pending.append((reasoning, text))
        self._ready.set()
        if len(pending) == 1:
            self._oldest = time.perf_counter()
        if len(pending) >= self._MAX_PENDING:
            await self._drained.wait()
        elif not self._sent_any or time.perf_counter() - self._oldest >= self._MAX_DELAY:
            await anyio.lowlevel.checkpoint()  # the relay runs now

    def finish(self) -> None:
        """No more deltas: send what is pending, then end :meth:`run`."""
        self._finished = True
        self._ready.set()

    async def run(self) -> None:
        send = self._request.send
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            if self._pending:
                pending, self._pending = self._pending, []
                self._sent_any = True
                for reasoning, text in _grouped(pending):
                    await send(ReasoningDelta(text) if reasoning else TextDelta(text))
                self._drained.set()
                self._drained = anyio.Event()
            if self._finished and not self._pending:
                return


def _grouped(pending: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
    """Consecutive pieces of one kind joined."""
    if len(pending) == 1:
        return pending
    groups: list[tuple[bool, str]] = []
    kind, parts = pending[0][0], [pending[0][1]]
    for reasoning, text in pending[1:]:
        if reasoning is kind:
            parts.append(text)
        else:
            groups.append((kind, "".join(parts)))
            kind, parts = reasoning, [text]
    groups.append((kind, "".join(parts)))
    return groups


async def read_stream(
    events: AsyncIterator[object],
    request: Request,
    assembly: StreamAssembly,
    progress: Progress,
    sdk_errors: Callable[[], AbstractContextManager[None]],
    provider: str,
    model: str,
    deliver: DeltaSink | None = None,
    note: Callable[[str], None] | None = None,
    watch: StallWatch | None = None,
    first: Callable[[object], None] | None = None,
) -> LLMClientError | None:
    """Read ``events`` into ``assembly``, relaying text and reasoning as they come.

    The deltas go to ``deliver`` when the caller gave one (awaited in this task: no handoff,
    and a slow sink slows the read), else to ``request``'s stream through a :class:`Relay`.
    Returns the typed error that ended the stream (the text read before it has reached the
    caller), or ``None``. ``sdk_errors()`` wraps the iteration (the SDK's errors become ours).
    ``note`` is told each tool-call piece as it is read (what a failed attempt is charged for).
    ``watch``: the stream ends with the typed error of a read timeout once it fires.
    ``first`` is given the first event as plain data, before it is decoded (who answered).
    """
    if deliver is not None:
        sink = deliver

        async def push(text: str, reasoning: bool = False) -> None:
            await sink(ReasoningDelta(text) if reasoning else TextDelta(text))

        return await _watched(
            _read(events, assembly, progress, sdk_errors, provider, model, push, note, first),
            watch, assembly, provider, model)
    relay = Relay(request)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(relay.run)
        failure = await _watched(
            _read(events, assembly, progress, sdk_errors, provider, model, relay.push, note,
                  first),
            watch, assembly, provider, model)
        relay.finish()
    return failure


async def _watched(reading: Awaitable[LLMClientError | None], watch: StallWatch | None,
                   assembly: StreamAssembly, provider: str,
                   model: str) -> LLMClientError | None:
    """``reading`` (:func:`_read`) awaited under ``watch`` (one cancel scope per stream), when
    there is one."""
    if watch is None:
        return await reading
    try:
        return await watch.bound(reading)
    except Stalled as stalled:
        error = LLMStreamingError(
            f"stream from {provider} failed: no bytes for {watch.timeout:g} s (read timeout)",
            provider=provider, model=model, partial_text=assembly.text)
        error.__cause__ = stalled  # its origin: our side stopped reading (see cut_off)
        return error


def cut_off(error: BaseException | None) -> bool:
    """Whether a stream that failed with ``error`` was cut on our side or on the way, not ended
    by the upstream: our read timeout, or the transport's error (the connection dropped, reset
    or timed out; a protocol error of a cut connection cannot be told from a garbled one and
    counts as cut, the bound's side). The upstream may run on and bill its whole answer then.
    Not cut: the upstream's own error event, an answer we cannot read, anything not a stream's.

    Told by the error's origin (the exception chain :func:`map_sdk_errors` and
    :func:`_watched` keep), never by its text.
    """
    if not isinstance(error, LLMStreamingError):
        return False
    cause = error.__cause__
    for _ in range(4):  # ours, the SDK's, httpx2's, then aiohttp's
        if cause is None:
            return False
        if _cut(cause):
            return True
        cause = cause.__cause__
    return False


def _cut(exc: BaseException) -> bool:
    if isinstance(exc, Stalled | TimeoutError | openai.APIConnectionError
                  | httpx2.TransportError):
        return True  # APIConnectionError: not the plain APIError of an upstream's error event
    aiohttp = sys.modules.get("aiohttp")  # loaded when its transport is in use
    return aiohttp is not None and isinstance(
        exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError)


async def _read(
    events: AsyncIterator[object],
    assembly: StreamAssembly,
    progress: Progress,
    sdk_errors: Callable[[], AbstractContextManager[None]],
    provider: str,
    model: str,
    push: Callable[[str, bool], Awaitable[None]],
    note: Callable[[str], None] | None,
    first: Callable[[object], None] | None = None,
) -> LLMClientError | None:
    started = progress.started
    add = assembly.add
    # The loop's last item stays in ``data``: whether the stream held an event costs no delta.
    data: object = _NO_EVENT
    try:
        with sdk_errors():
            async for data in events:
                if first is not None:
                    first(data)
                    first = None
                chunk = decode_chunk(data)
                text = add(chunk)
                reasoning = assembly.added_reasoning
                if reasoning:
                    if progress.ttfr is None:
                        progress.ttfr = time.perf_counter() - started
                    await push(reasoning, True)
                if text:
                    if progress.ttft is None:
                        progress.ttft = time.perf_counter() - started
                    await push(text, False)
                elif progress.ttft is None and chunk.has_output:
                    progress.ttft = time.perf_counter() - started  # a tool-call piece
                if note is not None and assembly.added_tool_text:
                    note(assembly.added_tool_text)
    except LLMClientError as exc:
        return exc
    except ValueError as exc:  # ours (MalformedResponse), or the SDK's JSON (4301 digits)
        return malformed_error(provider, model, exc, assembly.text)
    if data is _NO_EVENT:
        return malformed_error(provider, model, NoEvent())
    return None
