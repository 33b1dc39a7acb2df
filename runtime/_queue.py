"""The one queue of the kernel and the server: a deque, and an event only while someone waits.

It serves an actor's mailbox (unbounded: the cell enforces the bound for outside senders), a
streamed answer's items (bounded, ``0`` a rendezvous) and a chat connection's outbox (bounded, its
writer taking everything queued at once). Cheaper than an anyio memory object stream on these hot
paths: an item that fits, or one already queued, costs no checkpoint and no new ``Event`` (the
stream's ``receive`` yields to the loop on every item); a task waits on an event only when it has
to. Not thread-safe: the event loop's only. Runs on asyncio and trio.

On asyncio the consumer waits on one ``asyncio.Event`` of its queue, cleared before each wait:
``anyio.Event()`` looks the backend up and builds a new event (and binds it to the loop) every
time, ~10 us a wait against ~1 for the reused one. anyio cancels a task on asyncio by cancelling
the task, so the wait is cancelled the same way (anyio's own asyncio ``Event.wait`` awaits the same
call). Producers waiting for room, a slow path, wait on an ``anyio.Event`` each.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import Generic, TypeVar

import anyio

__all__ = ["Queue"]

T = TypeVar("T")


class Queue(Generic[T]):
    """A FIFO from any number of producers to one consumer, bounded at ``capacity`` items.

    ``capacity`` ``sys.maxsize`` (the default): unbounded; ``0``: :meth:`send` waits until its
    item is taken. Two endings, like a memory object stream's: :meth:`close` (the producers are
    done: the consumer takes what is queued, then ``EndOfStream``) and :meth:`break_` (the
    consumer is gone: what is queued is dropped, producers get ``BrokenResourceError``, the
    consumer ``ClosedResourceError``). Producers waiting for room wake in one go when the
    consumer takes an item; the order they then put in is the loop's.
    """

    __slots__ = ("_data", "_reused", "_space", "broken", "capacity", "closed", "items", "open")

    def __init__(self, capacity: int = sys.maxsize) -> None:
        self.items: deque[T] = deque()
        """What is queued (read it; change it only through the methods)."""
        self.capacity = capacity
        self.open = True
        """False once closed or broken."""
        self.closed = False
        self.broken = False
        self._data: asyncio.Event | anyio.Event | None = None  # the consumer waits on it
        self._reused: asyncio.Event | None = None  # on asyncio, the consumer's one event
        self._space: anyio.Event | None = None  # producers wait on it while the queue is full

    @property
    def ready(self) -> bool:
        """True when :meth:`get_nowait` would not block: an item is queued, or the end."""
        return bool(self.items) or not self.open

    @property
    def consumer_waiting(self) -> bool:
        """True while the consumer waits in :meth:`get` or :meth:`wait`."""
        return self._data is not None

    # -- producers ------------------------------------------------------------------------------

    def put(self, item: T) -> None:
        """Queue ``item`` now: ``WouldBlock`` when full, ``BrokenResourceError`` once broken,
        ``ClosedResourceError`` once closed."""
        items = self.items
        if not self.open or len(items) >= self.capacity:
            if self.broken:
                raise anyio.BrokenResourceError
            if self.closed:
                raise anyio.ClosedResourceError
            raise anyio.WouldBlock
        items.append(item)
        if self._data is not None:
            self.wake()

    async def wait_room(self) -> bool:
        """Wait while the queue is full; ``False`` once it has ended."""
        items = self.items
        while self.open and len(items) >= self.capacity:
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()
        return self.open

    async def send(self, item: T) -> None:
        """Queue ``item``, waiting while the queue is full (for a rendezvous: until it is taken);
        the errors of :meth:`put`."""
        items = self.items
        if self.open and len(items) < self.capacity:  # room: no wait
            items.append(item)
            self.wake()
            return
        rendezvous = not self.capacity
        while self.open and len(items) >= (self.capacity or 1):
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()
        if rendezvous and self.open:
            items.append(item)  # the one slot of a rendezvous
            self.wake()
            while items and not self.broken:
                if self._space is None:
                    self._space = anyio.Event()
                await self._space.wait()
            if self.broken and items:
                items.clear()
                raise anyio.BrokenResourceError
            return
        self.put(item)

    # -- the consumer -----------------------------------------------------------------------------

    def get_nowait(self) -> T:
        """The next item; ``EndOfStream`` once closed and drained, ``ClosedResourceError`` once
        broken, ``WouldBlock`` if none yet."""
        if self.broken:
            raise anyio.ClosedResourceError
        items = self.items
        if items:
            item = items.popleft()
            if self._space is not None:
                self._room()
            return item
        if self.closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def get(self) -> T:
        """The next item, waiting for one; the endings of :meth:`get_nowait`."""
        items = self.items
        while not items:
            if not self.open:
                return self.get_nowait()  # raises
            self._data = event = self._consumer_event()
            await event.wait()
        item = items.popleft()
        if self._space is not None:
            self._room()
        return item

    def take_all(self) -> list[T]:
        """Everything queued, in order; the producers waiting for room wake."""
        batch = list(self.items)
        self.items.clear()
        self._room()
        return batch

    async def wait(self) -> None:
        """Wait until an item is put, the queue ends or :meth:`wake` is called (whether or not
        something is already queued: for a consumer that also waits for something else)."""
        self._data = event = self._consumer_event()
        await event.wait()

    def _consumer_event(self) -> asyncio.Event | anyio.Event:
        """A cleared event for the consumer to wait on (see the module docstring)."""
        event = self._reused
        if event is not None:
            event.clear()
            return event
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # trio
            return anyio.Event()
        event = self._reused = asyncio.Event()
        return event

    def wake(self) -> None:
        """Wake the consumer if it waits."""
        data = self._data
        if data is not None:
            self._data = None
            data.set()

    # -- endings --------------------------------------------------------------------------------

    def close(self) -> None:
        """The producers' end: nothing more is put; the consumer takes what is queued."""
        self.closed = True
        self.open = False
        self._wake_all()

    def break_(self) -> None:
        """The consumer's end: what is queued is dropped; waiting producers are told."""
        self.broken = True
        self.open = False
        self.items.clear()
        self._wake_all()

    def _wake_all(self) -> None:
        self.wake()
        self._room()

    def _room(self) -> None:
        """Wake the producers waiting for room."""
        space = self._space
        if space is not None:
            self._space = None
            space.set()

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        state = "broken" if self.broken else "closed" if self.closed else "open"
        return f"<Queue {len(self.items)}/{self.capacity} {state}>"
