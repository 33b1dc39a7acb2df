"""A TCP proxy on 127.0.0.1 in front of a redis-server that tampers with its replies.

A reply lost with its connection after its command ran (:attr:`ReplyProxy.drop_next`), replies
late (:attr:`ReplyProxy.delay`), or nothing either way until :meth:`ReplyProxy.thaw` (a network
partition of this client only, Redis serving the others).
"""

from __future__ import annotations

import anyio
from anyio.abc import ByteStream, SocketStream, TaskStatus

from tests.redis_server import free_port

__all__ = ["ReplyProxy"]

_CLOSED = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class ReplyProxy:
    """``await group.start(proxy.serve)``, then connect to :attr:`url` instead of Redis."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        #: The next reply is not relayed: its connection is closed instead.
        self.drop_next = False
        self.dropped = 0
        #: Seconds each reply waits before it is relayed.
        self.delay = 0.0
        self._flowing = anyio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        """Relay nothing, neither commands nor replies, until :meth:`thaw`."""
        if self._flowing.is_set():
            self._flowing = anyio.Event()

    def thaw(self) -> None:
        self._flowing.set()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1",
                                                   local_port=self.port)
        async with listener:
            task_status.started()
            await listener.serve(self._relay)

    async def _relay(self, client: SocketStream) -> None:
        try:
            server = await anyio.connect_tcp("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, server, anyio.create_task_group() as group:
            group.start_soon(self._commands, client, server, group.cancel_scope)
            await self._replies(server, client)
            group.cancel_scope.cancel()

    async def _commands(self, client: ByteStream, server: ByteStream,
                        scope: anyio.CancelScope) -> None:
        try:
            async for chunk in client:
                await self._flowing.wait()
                await server.send(chunk)
        except _CLOSED:
            pass  # either side went away: the connection ends
        scope.cancel()

    async def _replies(self, server: ByteStream, client: ByteStream) -> None:
        try:
            async for chunk in server:
                await self._flowing.wait()
                if self.drop_next:
                    self.drop_next = False
                    self.dropped += 1
                    return  # the reply is lost with its connection
                if self.delay:
                    await anyio.sleep(self.delay)
                await client.send(chunk)
        except _CLOSED:
            pass  # either side went away: the connection ends
