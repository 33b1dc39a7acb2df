"""The simulator's pacer: every paced stream of the loop written from one timer.

The streams here are recording exchanges, not sockets: what is asserted is when the pacer
wrote each event (``loop.time()`` at the write), which a receiving socket would blur with its
own scheduling. Through real sockets the pacer is covered by the paced tests of
``test_simulator.py`` and ``tests/server/test_backpressure.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import cast

import pytest

from simulator._http import ClientDisconnected, Exchange
from simulator._pacing import _SLACK, Pacer

pytestmark = pytest.mark.anyio


class _Recording:
    """An exchange that records each chunk with the loop time it was written at."""

    def __init__(self, *, full_after: int | None = None) -> None:
        self.writes: list[tuple[float, bytes]] = []
        self.client_gone = False
        self.closed = False
        self._full_after = full_after

    @property
    def send_buffer_full(self) -> bool:
        return self._full_after is not None and len(self.writes) >= self._full_after

    def write_chunk(self, data: bytes) -> None:
        self.writes.append((asyncio.get_running_loop().time(), data))

    def as_exchange(self) -> Exchange:
        return cast(Exchange, self)


def _events(count: int, name: str = "e") -> list[bytes]:
    return [f"{name}{index}".encode() for index in range(count)]


async def test_many_streams_each_get_their_events_in_order_at_least_a_delay_apart() -> None:
    pacer, delay = Pacer(), 0.01
    events = [_events(12, f"s{n}-") for n in range(20)]
    streams = [_Recording() for _ in range(20)]
    start = asyncio.get_running_loop().time()
    # From event 2 on, as the simulator asks after writing the first chunks itself.
    futures = [pacer.write(s.as_exchange(), body, 2, 12, delay)
               for s, body in zip(streams, events, strict=True)]
    assert await asyncio.wait_for(asyncio.gather(*futures), 5) == [12] * 20
    for stream, body in zip(streams, events, strict=True):
        assert [data for _, data in stream.writes] == body[2:12]
        times = [start] + [at for at, _ in stream.writes]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= delay - _SLACK, gaps


async def test_a_delay_shorter_than_the_slack_still_writes_one_event_per_stream_per_tick() -> None:
    pacer = Pacer()
    stream = _Recording()
    assert await asyncio.wait_for(
        pacer.write(stream.as_exchange(), _events(5), 0, 5, _SLACK / 10), 5) == 5
    times = [at for at, _ in stream.writes]
    # Five ticks, each at least ``delay`` after the one before (less a few microseconds of the
    # tick's own work), not one burst (microseconds in all).
    assert times[-1] - times[0] >= 3 * (_SLACK / 10), times


async def test_a_full_send_buffer_hands_the_stream_back_where_it_stopped() -> None:
    pacer = Pacer()
    stream = _Recording(full_after=3)
    body = _events(10)
    assert await asyncio.wait_for(pacer.write(stream.as_exchange(), body, 0, 10, 0.001), 5) == 3
    assert [data for _, data in stream.writes] == body[:3]


async def test_a_gone_client_fails_its_stream_alone() -> None:
    pacer = Pacer()
    gone, other = _Recording(), _Recording()
    body = _events(6)
    failing = pacer.write(gone.as_exchange(), body, 0, 6, 0.005)
    running = pacer.write(other.as_exchange(), body, 0, 6, 0.005)
    await asyncio.sleep(0.012)
    gone.client_gone = True
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(failing, 5)
    assert gone.closed
    assert 1 <= len(gone.writes) < 6
    assert await asyncio.wait_for(running, 5) == 6
    assert len(other.writes) == 6


async def test_a_cancelled_stream_gets_no_more_writes() -> None:
    pacer = Pacer()
    stream, other = _Recording(), _Recording()
    cancelled = pacer.write(stream.as_exchange(), _events(50), 0, 50, 0.002)
    running = pacer.write(other.as_exchange(), _events(10), 0, 10, 0.002)
    await asyncio.sleep(0.01)
    cancelled.cancel()
    written = len(stream.writes)
    assert await asyncio.wait_for(running, 5) == 10
    assert len(stream.writes) == written < 50


async def test_nothing_to_write_resolves_at_once() -> None:
    future = Pacer().write(_Recording().as_exchange(), _events(3), 3, 3, 1.0)
    assert future.done() and future.result() == 3
