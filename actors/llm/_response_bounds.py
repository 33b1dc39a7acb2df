"""Bounds on what an upstream sends back: how many bytes, and (on aiohttp) how long it goes silent.

**Size.** Every response body a provider reads (answers, streams, error bodies) is counted as
its bytes arrive, before the SDK decodes them: :func:`bound_response`, run by the provider's
response hook, refuses a declared ``Content-Length`` over ``max_response_bytes`` before a byte
of the body is read, and wraps the body in a :class:`BoundedBody` that stops a chunked or
close-delimited one when its count passes the bound. Without it a hostile upstream's 2 GB body,
or a stream that never ends, was held in memory until the request's deadline. Compressed bodies
are refused: requests ask for ``Accept-Encoding: identity`` (answers are small and arrive at the
model's pace), and a few MiB of gzip inflate to GiB, past any count of the bytes received.
The check is one counter addition per network read.

**Values.** A body parsed whole (an error status's: the SDK parses it to build its status error;
a JSON one: an answer, or a stream answered with JSON) is also counted by its JSON values as it
arrives (``,``, ``{`` and ``[``: three ``bytes.count`` a read) against the call's bound, which
:mod:`._sdk_call` sets in :data:`values_allowed` (see :func:`~._wire_decode.value_bound`):
past it the body is refused with :class:`TooManyValuesRefused` before it is parsed (20 MB of
``[1,1,...]`` held the event loop 1-2 s in ``json.loads``). An event stream is counted event by
event, by the SSE decoder, not here: a whole stream holds more values than one event may.

**Silence.** httpx2 bounds each read by the read timeout. The SDK's aiohttp transport passes it
as ``sock_read``, but aiohttp drops that timer when its parser fails inside a chunked body (a bad
chunk size after a good chunk: the body's reader waits for bytes that never come) and after an
interim ``1xx`` response (the final one is awaited with no timer): the call hung until its
deadline (aiohttp's bugs, reproduced without us). On aiohttp the provider bounds each silence
by its ``timeout`` itself, as httpx2 does, with a :class:`StallWatch` (one timer per request,
not a cancel scope per read, which costs more than the rest of a delta's handling): the wait
for the response, then each wait for the body's next bytes (an answer's, given to the watch by
:func:`bound_response` through :data:`watching`; a stream's). An answer trickled steadily over
longer than the timeout completes, as on httpx2.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Awaitable
from contextvars import ContextVar
from typing import TypeVar

import anyio
import httpx2

from ._wire_decode import TooManyValues

__all__ = ["IDENTITY", "BoundedBody", "ResponseRefused", "StallWatch", "Stalled",
           "TooManyValuesRefused", "bound_response", "responded", "values_allowed", "watching"]

T = TypeVar("T")

IDENTITY = {"Accept-Encoding": "identity"}
"""The request header that asks for bodies as they are (see the module docstring)."""

responded: ContextVar[bool] = ContextVar("responded", default=False)
"""Set by :func:`bound_response` in the task whose request got a response (its headers): what
tells a request that could not be written from an answer that could not be read."""

watching: ContextVar[weakref.ref[StallWatch] | None] = ContextVar("watching", default=None)
"""The :class:`StallWatch` of the request the task is sending, if any: :func:`bound_response`
gives it the response's body, so that the body's silences are watched from its first read.
A weak reference: the transport's own tasks and callbacks (aiohttp's) copy the context they were
started in, and would keep the watch and its body alive as long as a pooled connection."""

values_allowed: ContextVar[int | None] = ContextVar("values_allowed", default=None)
"""The JSON values a body parsed whole may hold, set by the task sending the call (``None``: not
counted): :func:`bound_response` gives it to the response's :class:`BoundedBody`."""

# What httpx2 would inflate (its decoders); another coding is passed through as it is.
_COMPRESSED = frozenset({"gzip", "deflate", "br", "zstd"})


class ResponseRefused(httpx2.TransportError):
    """A response body we stop reading: ``reason`` says why (no upstream text in it).

    An httpx2 transport error, so that httpx2 and the SDK close the response (its connection is
    not reused) and pass it on as a failed read; :mod:`._error_mapping` makes it a typed error.
    """

    def __init__(self, reason: str, status_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class TooManyValuesRefused(ResponseRefused):
    """A body refused past :data:`values_allowed` JSON values: its reason is the malformed
    answer's (:func:`~._wire_decode.malformed_error`); ``response`` (headers and status only,
    its body unread) is what an error status's typed error is built from."""

    def __init__(self, bound: int, status_code: int, response: httpx2.Response | None) -> None:
        super().__init__(f"a malformed response ({TooManyValues(bound)})", status_code)
        self.bound = bound
        self.response = response


def _too_large(limit: int, status_code: int) -> ResponseRefused:
    return ResponseRefused(f"an answer larger than max_response_bytes ({limit} bytes)",
                           status_code)


class BoundedBody(httpx2.AsyncByteStream):
    """A response body that raises :class:`ResponseRefused` once more than ``limit`` bytes came.

    :attr:`waiting_since` is when the read in progress began (``None`` between reads), kept while
    a :class:`StallWatch` watches the body. With ``values``, also :class:`TooManyValuesRefused`
    once its bytes held more than ``values`` commas and brackets (``response``: the response it
    is the body of, for that error).
    """

    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, status_code: int,
                 values: int | None = None, response: httpx2.Response | None = None) -> None:
        self._inner = inner
        self._limit = limit
        self._status_code = status_code
        self._values = values
        # Weak: the response holds its body (this), which must not hold it back.
        self._response = None if response is None else weakref.ref(response)
        self.counted = 0
        self.received = 0
        self.watched = False
        self.waiting_since: float | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        limit = self._limit
        counting = self._values is not None
        if self.watched:  # one generator, not two: this runs once per network read
            reads = aiter(self._inner)
            clock = time.monotonic
            while True:
                self.waiting_since = clock()
                try:
                    chunk = await anext(reads)
                except StopAsyncIteration:
                    return
                finally:
                    self.waiting_since = None
                self.received += len(chunk)
                if self.received > limit:
                    raise _too_large(limit, self._status_code)
                if counting:
                    self._count(chunk)
                yield chunk
        async for chunk in self._inner:
            self.received += len(chunk)
            if self.received > limit:
                raise _too_large(limit, self._status_code)
            if counting:
                self._count(chunk)
            yield chunk

    def _count(self, chunk: bytes) -> None:
        self.counted += chunk.count(b",") + chunk.count(b"{") + chunk.count(b"[")
        values = self._values
        assert values is not None
        if self.counted > values:
            raise TooManyValuesRefused(values, self._status_code,
                                       None if self._response is None else self._response())

    async def aclose(self) -> None:
        await self._inner.aclose()


def bound_response(response: httpx2.Response, limit: int) -> None:
    """Refuse ``response`` now if it declares more than ``limit`` bytes or a compressed body;
    else bound its body (a :class:`BoundedBody`): by :data:`values_allowed` too when it is
    parsed whole (an error status, or JSON). Raises :class:`ResponseRefused`."""
    responded.set(True)
    headers = response.headers
    status = response.status_code
    length = headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            declared = 0  # the transport has refused a length that is not one
        if declared > limit:
            raise _too_large(limit, status)
    coding = headers.get("content-encoding")
    if coding is not None:
        codings = {part.strip().lower() for part in coding.split(",")}
        if codings & _COMPRESSED:
            raise ResponseRefused(
                f"a compressed answer (Content-Encoding {', '.join(sorted(codings & _COMPRESSED))})"
                " though it was asked for none", status)
    body = response.stream
    assert isinstance(body, httpx2.AsyncByteStream)  # an AsyncClient's (httpx2 checks it too)
    values = values_allowed.get()
    if values is not None and 200 <= status < 300 and (
            "json" not in headers.get("content-type", "").lower()):
        values = None  # an event stream (its events are counted), or text that is not parsed
    bounded = response.stream = BoundedBody(body, limit, status, values, response)
    watch = watching.get()
    if watch is not None and (alive := watch()) is not None:
        alive.attach(bounded)


class Stalled(Exception):
    """What :meth:`StallWatch.bound` raises once its watch fired."""


class StallWatch:
    """Cancels ``scope`` once a watched :class:`BoundedBody` has waited ``timeout`` seconds for
    its next bytes, or, before it has a body (``None``: waiting for the response), once
    ``timeout`` seconds passed since :meth:`start` (asyncio only: it serves the aiohttp
    transport). :attr:`fired` says it did.

    One timer per request, moved only when it fires: a read costs a clock reading.
    """

    def __init__(self, body: BoundedBody | None, timeout: float) -> None:
        self._body: BoundedBody | None = None
        self.timeout = timeout
        self.fired = False
        self._started = 0.0
        self._scope: anyio.CancelScope | None = None
        self._timer: asyncio.TimerHandle | None = None
        if body is not None:
            self.attach(body)

    def attach(self, body: BoundedBody) -> None:
        """Watch ``body`` from now on (the response came: its wait is over)."""
        body.watched = True
        self._body = body

    async def bound(self, awaitable: Awaitable[T]) -> T:
        """``awaitable`` awaited under this watch (one cancel scope); raises :class:`Stalled`
        once the watch fired."""
        with anyio.CancelScope() as scope:
            self.start(scope)
            try:
                return await awaitable
            finally:
                self.stop()
        # Only the watch cancels this scope (a cancel from outside is re-raised by its own scope).
        raise Stalled

    def start(self, scope: anyio.CancelScope) -> None:
        self._scope = scope
        self._started = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        body = self._body
        since = self._started if body is None else body.waiting_since
        now = time.monotonic()
        if since is not None and now - since >= self.timeout:
            self.fired = True
            self._timer = None
            assert self._scope is not None
            self._scope.cancel()
            return
        due = (since if since is not None else now) + self.timeout
        self._timer = asyncio.get_running_loop().call_later(due - now, self._check)
