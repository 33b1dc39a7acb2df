"""A caller's delta sink (``ChatRequest.deltas``) against the real runtime and simulator.

The provider's reading task awaits the sink for every delta: a sink that does not take the
next one holds the upstream read (backpressure), and leaving the ``ask_stream`` still cancels
the call and closes the upstream stream (cancellation), although the deltas skip the stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from actors.llm import ChatRequest, LLMConfig, ReasoningDelta, StreamEnd, TextDelta, open_runtime
from simulator.process import SimulatorProcess

MODEL = "gpt-4o-mini"
WORDS = 250_000  # ~50 MB of SSE: more than the loopback socket buffers hold
STALL_SECONDS = 3.0


def _config(base_url: str, tmp_path: Path) -> LLMConfig:
    return LLMConfig.model_validate({
        "providers": {"sim": {
            "kind": "openai-compatible", "base_url": base_url, "model": MODEL,
            "requires_api_key": False, "max_tokens": WORDS + 10,
            "context_windows": {MODEL: 1_000_000},
        }},
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3"), "daily_cost_limit": 1e6,
                 "max_cost_per_request": 1e6},
    })


async def _until_aborted(sim: SimulatorProcess) -> None:
    with anyio.fail_after(10):
        # Polling another process's counter: there is no event to wait on.
        while (await sim.stats())["streams"]["aborted_by_client"] < 1:
            await anyio.sleep(0.05)


async def test_a_sink_that_waits_holds_the_upstream_and_leaving_the_stream_stops_it(
    tmp_path: Path,
) -> None:
    simulator = {"models": {MODEL: {"context_window": 1_000_000, "reply_words": WORDS}}}
    received: list[str] = []
    items: list[Any] = []

    async def sink(delta: TextDelta | ReasoningDelta) -> None:
        received.append(delta.text)
        await anyio.sleep_forever()  # a client that stopped reading

    async with SimulatorProcess(simulator) as sim, open_runtime(
        _config(sim.base_url, tmp_path)
    ) as runtime:
        request = ChatRequest.of([{"role": "user", "content": "hold on"}], deltas=sink)

        async def consume() -> None:
            async with runtime.router.ask_stream(request, timeout=60) as stream:
                async for item in stream:
                    items.append(item)

        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            with anyio.fail_after(10):
                while not received:
                    await anyio.sleep(0.05)
            await anyio.sleep(STALL_SECONDS)  # the reader waits on the sink; the buffers fill
            held = (await sim.stats())["streams"]
            assert (held["open"], held["completed"]) == (1, 0)
            group.cancel_scope.cancel()  # the caller leaves its ask_stream
        await _until_aborted(sim)
        after = (await sim.stats())["streams"]
    assert (after["open"], after["completed"], after["aborted_by_client"]) == (0, 0, 1)
    assert received == ["Echo:"]  # one delta read, then the reader waited
    assert items == []  # the deltas went to the sink, not into the stream


async def test_deltas_reach_the_sink_in_order_and_the_stream_carries_only_the_end(
    tmp_path: Path,
) -> None:
    received: list[str] = []

    async def sink(delta: TextDelta | ReasoningDelta) -> None:
        received.append(delta.text)

    async with SimulatorProcess() as sim, open_runtime(_config(sim.base_url, tmp_path)) as rt:
        request = ChatRequest.of([{"role": "user", "content": "hello there"}],
                                 params={"max_tokens": 100}, deltas=sink)
        async with rt.router.ask_stream(request, timeout=30) as stream:
            items = [item async for item in stream]
    assert len(items) == 1 and isinstance(items[0], StreamEnd)
    assert "".join(received) == items[0].response.content == "Echo: hello there"
