"""Kernel throughput: asks per second and round-trip time, against a bare anyio floor.

The floor is the same request/reply with no kernel around it: callers put ``(message, reply)``
into a bounded memory stream and a server task answers through a one-slot memory stream. The kernel
runs the same load through ``ActorRef.ask``. Both run side by side in one process, alternating,
and the best of ``ROUNDS`` is kept for each, so the ratio is measured under the same conditions.

Run: ``.venv/bin/python -m benchmarks.kernel``
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from benchmarks._report import percentile, table
from runtime import Actor, ActorSystem, ChildSpec, SupervisorSpec

CALLERS = 1000
ASKS_PER_CALLER = 20
ROUNDS = 3

Ask = Callable[[int, Any], Awaitable[Any]]


class Echo(Actor[Any]):
    async def receive(self, message: Any) -> Any:
        return message


async def _drive(ask: Ask, actors: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def caller(index: int) -> None:
        target = index % actors
        for i in range(ASKS_PER_CALLER):
            start = time.perf_counter()
            await ask(target, i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(CALLERS):
            tg.start_soon(caller, index)
    elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies


async def _floor(actors: int) -> tuple[float, list[float]]:
    Item = tuple[Any, MemoryObjectSendStream[Any]]
    inboxes: list[tuple[MemoryObjectSendStream[Item], MemoryObjectReceiveStream[Item]]] = [
        anyio.create_memory_object_stream[Item](CALLERS) for _ in range(actors)
    ]

    async def server(inbox: MemoryObjectReceiveStream[Item]) -> None:
        async for message, reply in inbox:
            reply.send_nowait(message)

    async def ask(target: int, message: Any) -> Any:
        send, receive = anyio.create_memory_object_stream[Any](1)
        with send, receive:
            inboxes[target][0].send_nowait((message, send))
            return await receive.receive()

    async with anyio.create_task_group() as tg:
        for _, inbox in inboxes:
            tg.start_soon(server, inbox)
        result = await _drive(ask, actors)
        for send, _ in inboxes:
            send.close()
    for _, receive in inboxes:
        receive.close()
    return result


async def _kernel(actors: int) -> tuple[float, list[float]]:
    spec = SupervisorSpec(
        "root", [ChildSpec(f"echo-{i}", Echo, mailbox_size=CALLERS) for i in range(actors)]
    )
    async with ActorSystem(spec) as system:
        refs = [system.ref(f"echo-{i}") for i in range(actors)]

        async def ask(target: int, message: Any) -> Any:
            return await refs[target].ask(message)

        return await _drive(ask, actors)


async def main() -> None:
    rows: list[list[object]] = []
    ratios: list[float] = []
    for actors in (1, 100):
        best: dict[str, tuple[float, list[float]]] = {}
        for _ in range(ROUNDS):
            for name, run in (("floor", _floor), ("kernel", _kernel)):
                result = await run(actors)
                if name not in best or result[0] > best[name][0]:
                    best[name] = result
        floor_rate = best["floor"][0]
        for name in ("floor", "kernel"):
            rate, latencies = best[name]
            rows.append([
                f"{actors} actor{'s' if actors > 1 else ''}", name, rate,
                percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000,
                rate / floor_rate,
            ])
        ratios.append(best["kernel"][0] / floor_rate)
    print(f"{CALLERS} concurrent callers, {ASKS_PER_CALLER} asks each, best of {ROUNDS} rounds")
    print(table(["targets", "path", "asks/s", "p50 ms", "p99 ms", "vs floor"], rows))
    print(f"kernel/floor throughput ratio: {min(ratios):.2f}")


if __name__ == "__main__":
    anyio.run(main)
