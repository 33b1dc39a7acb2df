"""The link's own connection to Redis, pipelined (:class:`Pipeline`).

Every call writes its command at once and a reader task hands the replies back in order, so calls
made at about the same time (concurrent requests') share one round trip and one wakeup on each
side (like ioredis). redis-py's pool costs ~60 us a call here (a condition, a readiness poll,
metrics), its per-write timeout a task. No socket timeout: each call's single deadline (the
link's) bounds its phases.
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


class Pipeline:
    """One pipelined connection at a time, connected on demand (see the module docstring).

    ``make`` builds an unconnected redis-py connection, ``pack`` packs a command,
    ``connection_error`` is redis-py's ``ConnectionError`` (raised to the calls still waiting
    when the connection ends: they may try a new one).
    """

    def __init__(self, make: Callable[[], AbstractConnection],
                 pack: Callable[[tuple[Any, ...]], bytes],
                 connection_error: type[Exception], response_error: type[Exception]) -> None:
        self._make = make
        self._pack = pack
        self._connection_error = connection_error
        self._response_error = response_error
        self._pipe: _Pipe | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    async def exchange(self, command: tuple[Any, ...]) -> Any:
        """Write one command on the pipelined connection; its reply (the caller holds a slot).

        A cancelled caller leaves its reply to the reader, which drops it.
        """
        pipe = self._pipe
        if pipe is None or pipe.broken:
            pipe = await self._open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
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

    async def _open(self) -> _Pipe:
        """The pipelined connection, connected now if there is none (one at a time)."""
        async with self._opening:
            pipe = self._pipe
            if pipe is not None and not pipe.broken:
                return pipe
            if self._closed:
                raise anyio.ClosedResourceError
            connection = self._make()
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                await _disconnect(connection)
                raise
            pipe = self._pipe = _Pipe(connection)
            pipe.reader = asyncio.get_running_loop().create_task(self._read(pipe))
            return pipe

    async def _read(self, pipe: _Pipe) -> None:
        """The pipe's reader: each reply to the oldest call waiting, until the connection ends
        (then every waiting call gets a connection error and tries a new one)."""
        connection, waiting = pipe.connection, pipe.waiting
        try:
            while True:
                try:
                    answer = await connection.read_response(disconnect_on_error=False)
                except self._response_error as exc:
                    answer = exc
                if not waiting:  # a reply nobody asked for: the stream is out of step
                    break
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

    def break_(self) -> None:
        """End the connection now (a call timed out on it: it or Redis is stuck); the calls
        waiting on it fail with ``connection_error``, the next call connects anew."""
        self._break(self._pipe)

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
    """The link's connection, its calls waiting for replies in order, and its reader task."""

    __slots__ = ("broken", "connection", "reader", "unsent", "waiting")

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.unsent: list[bytes] = []  # packed commands for the next write
        self.reader: asyncio.Task[None] | None = None
        self.broken = False


async def _disconnect(connection: AbstractConnection) -> None:
    with anyio.CancelScope(shield=True):
        await connection.disconnect(nowait=True)  # nowait: closes without waiting
