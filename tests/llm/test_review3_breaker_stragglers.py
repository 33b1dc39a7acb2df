"""A call admitted before the breaker opened (a straggler) is not one of the half-open trial
calls: its end, answered or cancelled, neither closes the breaker nor gives it a trial permit.
With one permitted trial, exactly one trial call reaches the upstream until that trial reports.

A raw upstream of our own on 127.0.0.1 holds the straggler and the trial open until told."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from actors.llm import LLMServerError, ProviderConfig, ProviderUnavailable
from actors.llm._provider import ProviderState
from runtime.testing import FakeClock
from tests.chaos.upstream import good_completion
from tests.llm.test_provider import call, running

pytestmark = pytest.mark.anyio


@dataclass
class Upstream:
    """Request n (1-based) is answered 500 if n is in ``failing``, else 200 once ``answer[n]``
    is set (at once if it has none)."""

    failing: set[int]
    answer: dict[int, asyncio.Event] = field(default_factory=dict)
    requests: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, count: int) -> None:
        while self.requests < count:
            self.arrived.clear()
            await self.arrived.wait()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            self.requests += 1
            number = self.requests
            self.arrived.set()
            if number in self.answer:
                await self.answer[number].wait()
            status, body = ((500, {"error": {"message": "boom", "type": "server_error"}})
                            if number in self.failing else (200, good_completion()))
            data = json.dumps(body).encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (status, len(data))
                         + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(upstream: Upstream) -> AsyncIterator[str]:
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        for event in upstream.answer.values():
            event.set()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("straggler_ends", ["answered", "cancelled"])
async def test_a_call_admitted_before_the_breaker_opened_is_not_a_half_open_trial(
        straggler_ends: str) -> None:
    # Request 1: the straggler, held; 2 and 3 fail (the breaker opens); 4: the one trial, held.
    upstream = Upstream(failing={2, 3}, answer={1: asyncio.Event(), 4: asyncio.Event()})
    clock = FakeClock()
    async with serving(upstream) as base_url:
        config = ProviderConfig(
            kind="openai-compatible", base_url=base_url, model="gpt-4o-mini",
            requires_api_key=False, max_tokens=10,
            breaker={"sliding_window_size": 2, "minimum_number_of_calls": 2,
                     "wait_duration_in_open_state": 10, "permitted_calls_in_half_open_state": 1})
        async with running(config, clock=clock) as (system, ref):
            state: ProviderState = system.durable("sim")
            with anyio.fail_after(15):
                async with anyio.create_task_group() as group:
                    straggler = anyio.CancelScope()
                    ended: list[str] = []

                    async def ask_in(scope: anyio.CancelScope, name: str) -> None:
                        with scope:
                            await ref.ask(call(), timeout=10)
                            ended.append(name)

                    group.start_soon(ask_in, straggler, "straggler")
                    await upstream.until(1)
                    for _ in range(2):
                        with pytest.raises(LLMServerError):
                            await ref.ask(call(), timeout=5)
                    assert state.health.breaker == "open"
                    await clock.advance(10)
                    group.start_soon(ask_in, anyio.CancelScope(), "trial")
                    await upstream.until(4)
                    assert state.health.breaker == "half_open"

                    if straggler_ends == "answered":
                        upstream.answer[1].set()
                        while "straggler" not in ended:
                            await anyio.sleep(0.01)
                    else:
                        straggler.cancel()
                    while system.status()["sim"].in_flight > 1:  # the trial's only
                        await anyio.sleep(0.01)

                    assert state.health.breaker == "half_open"
                    with pytest.raises(ProviderUnavailable) as refused:
                        await ref.ask(call(), timeout=5)
                    assert refused.value.message == (
                        "sim is unavailable: circuit breaker half_open (retry after 0 s)")
                    assert upstream.requests == 4

                    upstream.answer[4].set()  # the trial succeeds: closed
                    while "trial" not in ended:
                        await anyio.sleep(0.01)
                assert state.health.breaker == "closed"
                assert (await ref.ask(call(), timeout=5)).content == "fine"
    assert upstream.requests == 5
