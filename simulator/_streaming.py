"""A streamed chat completion on the wire: its SSE events with the configured delays, OpenRouter's
processing comments, and the mid-stream faults (a dropped connection or an error event)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ._config import FaultConfig, Flavor
from ._http import ClientDisconnected, Exchange
from ._pacing import Pacer
from ._replies import Reply
from ._stats import Stats
from ._wire import StreamEvents

__all__ = ["SSE_HEADERS", "stream_reply"]

SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
_BATCH = 32
_PROCESSING = b": OPENROUTER PROCESSING\n\n"
_DONE = b"data: [DONE]\n\n"


async def stream_reply(
    exchange: Exchange,
    headers: list[tuple[str, str]],
    flavor: Flavor,
    events: StreamEvents,
    reply: Reply,
    usage: dict[str, Any] | None,
    fault: str | None,
    position_draw: float,
    *,
    faults: FaultConfig,
    stats: Stats,
    clock: Callable[[], float],
    pacer: Pacer,
) -> None:
    """Stream ``reply`` (then ``usage``, when given) as ``events``; a mid-stream ``fault`` strikes
    at the chunk ``position_draw`` picks. Counted in ``stats``'s stream counters; paced by
    ``pacer`` when ``faults.chunk_delay`` is set."""
    body = events.reply(reply)
    # The fault strikes after the role chunk and at least one reasoning or content chunk,
    # before the finishing chunk: a client has then already relayed output and may not
    # fall back.
    before_finish = len(body) - 1
    cut = min(before_finish, 2 + int(position_draw * max(0, before_finish - 1)))
    if usage is not None:
        body.append(events.usage(usage))
    stats.streams_started += 1
    stats.streams_open += 1
    try:
        await exchange.start_stream(200, [*headers, *SSE_HEADERS])
        await _first_byte_delay(exchange, flavor, faults, clock)
        end = cut if fault is not None else len(body)
        pending: list[bytes] = []
        if faults.chunk_delay:
            await _paced(exchange, body, end, faults.chunk_delay, pacer)
        else:
            pending = body[:end]
            for start in range(0, end - _BATCH, _BATCH):
                exchange.write_chunk(b"".join(body[start:start + _BATCH]))
                await exchange.flush()
                del pending[:_BATCH]
        if fault is not None:
            if pending:
                exchange.write_chunk(b"".join(pending))
            await _strike(exchange, events, fault, stats)
            return
        pending.append(_DONE)
        exchange.write_chunk(b"".join(pending))
        await exchange.end_stream()
        stats.streams_completed += 1
    except ClientDisconnected:
        stats.streams_aborted_by_client += 1
    finally:
        stats.streams_open -= 1


async def _paced(
    exchange: Exchange, body: list[bytes], end: int, delay: float, pacer: Pacer
) -> None:
    """The first ``end`` events: the first at once, then one every ``delay`` seconds."""
    exchange.write_chunk(body[0])
    await exchange.flush()
    index = 1
    while index < end:
        index = await pacer.write(exchange, body, index, end, delay)
        await exchange.flush()  # waits while the client does not read


async def _strike(exchange: Exchange, events: StreamEvents, fault: str, stats: Stats) -> None:
    if fault == "midstream_drop":
        stats.streams_dropped += 1
        await exchange.drop()
        return
    exchange.write_chunk(events.error("Upstream error mid generation."))
    await exchange.end_stream()
    stats.streams_errored += 1


async def _first_byte_delay(
    exchange: Exchange, flavor: Flavor, faults: FaultConfig, clock: Callable[[], float]
) -> None:
    seconds = faults.first_byte_delay
    if flavor != "openrouter":
        if seconds:
            await asyncio.sleep(seconds)
        return
    exchange.write_chunk(_PROCESSING)
    await exchange.flush()
    interval = faults.keepalive_interval
    deadline = clock() + seconds
    while (left := deadline - clock()) > 0:
        await asyncio.sleep(min(interval, left))
        if clock() < deadline:
            exchange.write_chunk(_PROCESSING)
            await exchange.flush()
