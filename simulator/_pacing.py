"""Paced stream events, written for every stream of the loop by one timer.

A stream that slept between its events cost a task wake-up, a future and a timer handle per
event; here a paced event costs a heap entry and its write. The events of all streams due within
the same millisecond (the loop's timer resolution on uvloop) go out in one callback.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Sequence

from ._http import ClientDisconnected, Exchange

__all__ = ["Pacer"]

#: Events due this close after a tick go out in it (a timer fires no more precisely).
_SLACK = 0.001


class _Paced:
    """One stream's run of events: ``events[index:stop]``, one every ``delay`` seconds."""

    __slots__ = ("delay", "events", "exchange", "future", "index", "stop")

    def __init__(self, exchange: Exchange, events: Sequence[bytes], index: int, stop: int,
                 delay: float, future: asyncio.Future[int]) -> None:
        self.exchange, self.events, self.index, self.stop = exchange, events, index, stop
        self.delay, self.future = delay, future


class Pacer:
    """Writes the paced events of the loop's streams; one per simulator (and loop)."""

    __slots__ = ("_due", "_heap", "_order", "_timer")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Paced]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._due = float("inf")

    def write(self, exchange: Exchange, events: Sequence[bytes], start: int, stop: int,
              delay: float) -> asyncio.Future[int]:
        """Write ``events[start:stop]`` as chunks, each ``delay`` seconds after the one before
        (the first ``delay`` seconds from now).

        The future gives the index of the first event not written: ``stop``, or an earlier one
        when the connection's send buffer is full (the caller waits until it drains, then asks
        for the rest: a client that stops reading stops the stream). It fails with
        :class:`ClientDisconnected` once the client has gone. Cancelling it stops the writes.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if start >= stop:
            future.set_result(stop)
        else:
            self._push(loop, loop.time() + delay,
                       _Paced(exchange, events, start, stop, delay, future))
        return future

    def _push(self, loop: asyncio.AbstractEventLoop, due: float, paced: _Paced) -> None:
        heapq.heappush(self._heap, (due, next(self._order), paced))
        if due < self._due:
            if self._timer is not None:
                self._timer.cancel()
            self._due = due
            self._timer = loop.call_at(due, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer, self._due = None, float("inf")
        heap = self._heap
        now = loop.time()
        later: list[_Paced] = []  # pushed after the sweep: one event per stream per tick
        while heap and heap[0][0] <= now + _SLACK:
            _, _, paced = heapq.heappop(heap)
            if paced.future.done():  # cancelled by its stream
                continue
            exchange = paced.exchange
            try:
                if exchange.client_gone:
                    raise ClientDisconnected
                exchange.write_chunk(paced.events[paced.index])
            except ClientDisconnected as exc:
                exchange.closed = True
                paced.future.set_exception(exc)
                continue
            paced.index += 1
            if paced.index >= paced.stop or exchange.send_buffer_full:
                paced.future.set_result(paced.index)
            else:
                later.append(paced)
        for paced in later:
            heapq.heappush(heap, (now + paced.delay, next(self._order), paced))
        if heap:
            self._due = heap[0][0]
            self._timer = loop.call_at(self._due, self._tick)
