"""The link's own connection to Redis, pipelined (:class:`Pipeline`).

Every call writes its command at once and a reader task hands the replies back in order, so calls
made at about the same time (concurrent requests') share one round trip and one wakeup on each
side (like ioredis). redis-py's pool costs ~60 us a call here (a condition, a readiness poll,
metrics), its per-write timeout a task. No socket timeout: the watchdog below and the link's
deadline per call bound a call's phases.

A connection is **stuck** when calls wait on it and no reply came for ``patience`` seconds: a
watchdog (one timer per connection, not per call) then fails every waiting call with
:class:`TimeoutError` and ends the connection. While replies keep coming the calls wait: Redis is
slow, or this process is (an event loop hundreds of ms behind under overload reads a reply late,
and a per-call deadline would call that an outage, fail the turn closed and mark ``/health``
failing). Before it fails the calls, the watchdog lets the loop run a few more iterations, so
that replies that arrived with its timer are read first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

__all__ = ["Pipeline"]

logger = logging.getLogger(__name__)

#: Loop iterations between a command and the write that sends it with the ones made meanwhile:
#: the commands of concurrent requests made in one iteration share one write.
_FLUSH_TICKS = 1
#: Loop iterations the watchdog waits, once its time is up, for replies already received to be
#: read (the bytes' callback, the reader's wakeup, its parse) before it calls the connection stuck.
_STUCK_TICKS = 3


class Pipeline:
    """One pipelined connection at a time, connected on demand (see the module docstring).

    ``make`` builds an unconnected redis-py connection, ``pack`` packs a command,
    ``connection_error`` is redis-py's ``ConnectionError`` (raised to the calls still waiting
    when the connection ends: they may try a new one), ``patience`` the seconds without a reply
    after which a connection is stuck (and the longest wait for a connection to be made).
    """

    def __init__(self, make: Callable[[], AbstractConnection],
                 pack: Callable[[tuple[Any, ...]], bytes],
                 connection_error: type[Exception], response_error: type[Exception], *,
                 patience: float) -> None:
        self._make = make
        self._pack = pack
        self._connection_error = connection_error
        self._response_error = response_error
        self._patience = patience
        self._pipe: _Pipe | None = None
        self._opening = asyncio.Lock()
        self._connects_timed_out = 0
        self._closed = False

    async def exchange(self, command: tuple[Any, ...]) -> Any:
        """Write one command on the pipelined connection; its reply (the caller holds a slot).

        A cancelled caller leaves its reply to the reader, which drops it. Raises
        :class:`TimeoutError` when the connection is stuck (module docstring) or cannot be made
        within ``patience``.
        """
        pipe = self._pipe
        if pipe is None or pipe.broken:
            pipe = await self._open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not pipe.waiting:
            pipe.last_reply = loop.time()  # an idle connection owes nothing: its clock starts
            if not pipe.watched:
                pipe.watched = True
                loop.call_at(pipe.last_reply + self._patience, self._watch, pipe, _STUCK_TICKS)
        pipe.waiting.append(future)
        pipe.unsent.append(self._pack(command))
        if len(pipe.unsent) == 1:
            loop.call_soon(self._flush, pipe, _FLUSH_TICKS)
        return await future

    def _flush(self, pipe: _Pipe, ticks: int) -> None:
        """Write every command made since the last write in one write, ``ticks`` loop
        iterations after the first of them (a system call costs more than a tick here)."""
        if ticks > 1:
            asyncio.get_running_loop().call_soon(self._flush, pipe, ticks - 1)
            return
        unsent, pipe.unsent = pipe.unsent, []
        if pipe.broken or not unsent:
            return  # the reader fails the calls waiting on it
        writer = pipe.connection._writer
        try:
            assert writer is not None
            writer.writelines(unsent)  # buffered by the transport: bounded by the call slots
        except Exception as exc:
            logger.debug("cluster: write failed: %r", exc)
            self._break(pipe)

    def _watch(self, pipe: _Pipe, ticks: int) -> None:
        """The connection's watchdog: re-armed while replies come, stuck after ``patience``
        without one (then ``ticks`` more loop iterations without one)."""
        loop = asyncio.get_running_loop()
        if pipe.broken or not pipe.waiting:
            pipe.watched = False
            return
        due = pipe.last_reply + self._patience
        if loop.time() < due:
            loop.call_at(due, self._watch, pipe, _STUCK_TICKS)
        elif ticks:
            loop.call_soon(self._watch, pipe, ticks - 1)
        else:
            pipe.watched = False
            for future in pipe.waiting:
                if not future.done():
                    future.set_exception(TimeoutError())
            self._break(pipe)

    async def _open(self) -> _Pipe:
        """The pipelined connection, connected now if there is none (one at a time). The calls
        that waited for a connect that timed out fail with it (each trying its own would fail
        one ``patience`` after the other)."""
        attempts = self._connects_timed_out
        async with self._opening:
            pipe = self._pipe
            if pipe is not None and not pipe.broken:
                return pipe
            if self._closed:
                raise anyio.ClosedResourceError
            if self._connects_timed_out != attempts:
                raise TimeoutError
            connection = self._make()
            try:
                async with asyncio.timeout(self._patience):
                    await connection.connect()  # type: ignore[no-untyped-call]
            except BaseException as exc:
                if isinstance(exc, TimeoutError):
                    self._connects_timed_out += 1
                await _disconnect(connection)
                raise
            pipe = self._pipe = _Pipe(connection)
            pipe.reader = asyncio.get_running_loop().create_task(self._read(pipe))
            return pipe

    async def _read(self, pipe: _Pipe) -> None:
        """The pipe's reader: each reply to the oldest call waiting, until the connection ends
        (then every waiting call gets a connection error and tries a new one)."""
        connection, waiting = pipe.connection, pipe.waiting
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    answer = await connection.read_response(disconnect_on_error=False)
                except self._response_error as exc:
                    answer = exc
                if not waiting:  # a reply nobody asked for: the stream is out of step
                    break
                pipe.last_reply = loop.time()
                future = waiting.popleft()
                if future.done():  # its caller gave up
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
        except Exception as exc:
            logger.debug("cluster: connection ended: %r", exc)
        finally:
            pipe.broken = True
            if self._pipe is pipe:
                self._pipe = None
            while waiting:
                future = waiting.popleft()
                if not future.done():
                    future.set_exception(self._connection_error("connection lost"))
            await _disconnect(connection)

    async def aclose(self) -> None:
        """End the connection and wait for its reader; no call connects after this."""
        self._closed = True
        pipe = self._pipe
        self._break(pipe)
        if pipe is not None and pipe.reader is not None:
            await asyncio.wait({pipe.reader})

    def _break(self, pipe: _Pipe | None) -> None:
        """End ``pipe`` now (its reader fails the calls still waiting on it)."""
        if pipe is None or pipe.broken:
            return
        pipe.broken = True
        if self._pipe is pipe:
            self._pipe = None
        if pipe.reader is not None:
            pipe.reader.cancel()


class _Pipe:
    """The link's connection, its calls waiting for replies in order, its reader task and
    its watchdog's state."""

    __slots__ = ("broken", "connection", "last_reply", "reader", "unsent", "waiting", "watched")

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.unsent: list[bytes] = []  # packed commands for the next write
        self.reader: asyncio.Task[None] | None = None
        self.broken = False
        #: Loop time of the last reply read, or of the first call made while none was owed.
        self.last_reply = 0.0
        self.watched = False  # a watchdog timer is armed


async def _disconnect(connection: AbstractConnection) -> None:
    with anyio.CancelScope(shield=True):
        await connection.disconnect(nowait=True)  # nowait: closes without waiting
