"""A ProviderActor against the bare SDK on the same simulator, in the same run.

For concurrency 1, 16 and 128, streaming and not, ``SECONDS`` of closed-loop load each through
(the actor and the SDK alternate in ``ROUNDS`` short rounds: this 2-core machine drifts by 30%
between consecutive seconds, and alternating spreads the drift over both):

* **actor**: ``ask`` / ``ask_stream`` of a :class:`~actors.llm._provider.ProviderActor` (its pool,
  limiter without limits, breaker, error mapping, metrics events off);
* **sdk**: one ``AsyncOpenAI`` (``max_retries=0``) with the same pool limits, called directly, on
  each of its transports: an ``httpx2.AsyncClient`` and (with ``openai[aiohttp]``) its
  ``DefaultAioHttpClient``; the actor runs on both transports too, and the ratio is the actor on
  the default transport against the SDK on whichever transport is faster for it in that cell;
* **sdk unpooled**: a new ``AsyncOpenAI`` and pool per request (closed after it): what a client
  that is not kept around costs.

Non-streaming requests get the short ``Echo`` answer; streaming ones ``sim-long`` (200 words, one
SSE event each). Reported: requests/s, latency p50/p99, chunks/s, time to first chunk (p50) and
the client's CPU per request (robust to a machine shared with other work, unlike throughput).
Chunks are counted as upstream chunks on both sides (one word each): the actor joins the deltas
that arrive in one network read into one ``TextDelta``.
The last line is the worst actor/sdk throughput ratio over the table.

Run: ``.venv/bin/python -m benchmarks.provider [seconds]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import openai

from actors.llm import (
    ChatRequest,
    ProviderCall,
    ProviderConfig,
    StreamEnd,
    TextDelta,
    provider_child_spec,
)
from actors.llm._http_pool import DEFAULT_TRANSPORT, Transport, aiohttp_available
from benchmarks._report import percentile, table
from runtime import ActorRef, ActorSystem, SupervisorSpec
from simulator.process import SimulatorProcess

SECONDS = 3.0
ROUNDS = 6
CONCURRENCY = (1, 16, 128)
POOL = 128
KEY = "sk-bench"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
# What the actor sends from ProviderConfig's defaults; the bare SDK sends the same.
GENERATION: Any = {"temperature": 0.7, "top_p": 1.0, "presence_penalty": 0.0,
                   "frequency_penalty": 0.0}
SHORT, LONG = "gpt-4o-mini", "sim-long"


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    chunks: int = 0
    cpu: float = 0.0  # seconds of this process's CPU (the simulator runs in another process)


# A call does one request and returns (chunks, time to first chunk or None).
Call = Callable[[], Awaitable[tuple[int, float | None]]]


def _limits() -> httpx2.Limits:
    return httpx2.Limits(max_connections=POOL, max_keepalive_connections=POOL,
                         keepalive_expiry=30.0)


def _sdk(base_url: str, transport: Transport = "httpx2") -> openai.AsyncOpenAI:
    timeout = httpx2.Timeout(60.0, connect=10.0)
    http: httpx2.AsyncClient
    if transport == "aiohttp":
        http = openai.DefaultAioHttpClient(limits=_limits(), timeout=timeout)
    else:
        http = httpx2.AsyncClient(limits=_limits(), timeout=timeout)
    return openai.AsyncOpenAI(base_url=base_url, api_key=KEY, http_client=http, max_retries=0)


def sdk_call(client: openai.AsyncOpenAI, stream: bool) -> Call:
    async def plain() -> tuple[int, float | None]:
        await client.chat.completions.create(model=SHORT, messages=MESSAGES, max_tokens=100,
                                             **GENERATION)
        return 0, None

    async def streamed() -> tuple[int, float | None]:
        started = time.perf_counter()
        first: float | None = None
        chunks = 0
        response = await client.chat.completions.create(
            model=LONG, messages=MESSAGES, max_tokens=1000, stream=True,
            stream_options={"include_usage": True}, **GENERATION)
        async with response:
            async for chunk in response:
                if chunk.choices and (text := chunk.choices[0].delta.content):
                    chunks += len(text.split())
                    if first is None:
                        first = time.perf_counter() - started
        return chunks, first

    return streamed if stream else plain


def unpooled_call(base_url: str, stream: bool) -> Call:
    async def call() -> tuple[int, float | None]:
        client = _sdk(base_url)
        try:
            return await sdk_call(client, stream)()
        finally:
            await client.close()

    return call


def actor_call(ref: ActorRef, stream: bool) -> Call:
    chat = ChatRequest.of(MESSAGES, params={"max_tokens": 1000 if stream else 100})
    plain_call = ProviderCall(chat, SHORT, 10)
    stream_call = ProviderCall(chat, LONG, 10, stream=True)

    async def plain() -> tuple[int, float | None]:
        await ref.ask(plain_call, timeout=60)
        return 0, None

    async def streamed() -> tuple[int, float | None]:
        started = time.perf_counter()
        first: float | None = None
        chunks = 0
        async with ref.ask_stream(stream_call, timeout=60, buffer=64) as items:
            async for item in items:
                if isinstance(item, TextDelta):
                    chunks += len(item.text.split())  # deltas of one read arrive joined
                    if first is None:
                        first = time.perf_counter() - started
                elif isinstance(item, StreamEnd):
                    pass
        return chunks, first

    return streamed if stream else plain


async def load(call: Call, concurrency: int, seconds: float, sample: Sample) -> float:
    """Run ``concurrency`` closed-loop workers for ``seconds``; add to ``sample``, return time."""
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            chunks, first = await call()
            sample.latencies.append(time.perf_counter() - started)
            sample.chunks += chunks
            if first is not None:
                sample.ttfts.append(first)

    started, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    sample.cpu += time.process_time() - cpu
    return time.perf_counter() - started


async def compare(calls: dict[str, Call], concurrency: int, seconds: float,
                  rounds: int) -> dict[str, tuple[Sample, float]]:
    """Alternate the clients in short rounds, so that drift of a noisy machine hits all alike."""
    results = {name: (Sample(), 0.0) for name in calls}
    for call in calls.values():
        for _ in range(min(concurrency, 8)):  # warm the pools and the code paths
            await call()
    for _ in range(rounds):
        for name, call in calls.items():
            sample, elapsed = results[name]
            results[name] = (sample, elapsed + await load(call, concurrency, seconds / rounds,
                                                          sample))
    return results


def row(name: str, stream: bool, concurrency: int, sample: Sample, elapsed: float) -> list[object]:
    rps = len(sample.latencies) / elapsed
    return [
        name,
        "yes" if stream else "no",
        concurrency,
        rps,
        percentile(sample.latencies, 0.5) * 1000,
        percentile(sample.latencies, 0.99) * 1000,
        sample.chunks / elapsed if stream else "",
        percentile(sample.ttfts, 0.5) * 1000 if stream else "",
        sample.cpu / max(1, len(sample.latencies)) * 1e6,
    ]


async def main(seconds: float = SECONDS) -> None:
    rows: list[list[object]] = []
    ratios: list[tuple[float, str]] = []
    cpu_ratios: list[tuple[float, str]] = []
    async with SimulatorProcess() as sim:
        config = ProviderConfig(kind="openai-compatible", base_url=sim.base_url, model=SHORT,
                                requires_api_key=False, max_connections=POOL,
                                max_keepalive_connections=POOL, max_tokens=100)
        transports: tuple[Transport, ...] = (
            ("httpx2", "aiohttp") if aiohttp_available() else ("httpx2",))
        system = ActorSystem(SupervisorSpec("bench", [
            provider_child_spec(f"sim-{transport}", config, transport=transport)
            for transport in transports]))
        sdks = {transport: _sdk(sim.base_url, transport) for transport in transports}
        async with system:
            for stream in (False, True):
                for concurrency in CONCURRENCY:
                    calls: dict[str, Call] = {}
                    for transport in transports:
                        calls[f"sdk {transport}"] = sdk_call(sdks[transport], stream)
                        calls[f"actor {transport}"] = actor_call(
                            system.ref(f"sim-{transport}"), stream)
                    results = await compare(calls, concurrency, seconds, ROUNDS)
                    results.update(await compare(
                        {"sdk unpooled": unpooled_call(sim.base_url, stream)},
                        concurrency, seconds / 2, 1))
                    for name, (sample, elapsed) in results.items():
                        rows.append(row(name, stream, concurrency, sample, elapsed))
                    rps = {name: len(s.latencies) / e for name, (s, e) in results.items()}
                    label = f"{'stream' if stream else 'plain'} c={concurrency}"
                    # Against the SDK on whichever transport is faster for it, here.
                    sdk = max((f"sdk {t}" for t in transports), key=rps.__getitem__)
                    actor = f"actor {DEFAULT_TRANSPORT}"
                    ratios.append((rps[actor] / rps[sdk], f"{label} vs {sdk}"))
                    cpu = {name: s.cpu / max(1, len(s.latencies))
                           for name, (s, _) in results.items()}
                    cpu_ratios.append((cpu[sdk] / cpu[actor], label))
        for client in sdks.values():
            await client.close()
    print(table(["client", "stream", "concurrency", "req/s", "p50 ms", "p99 ms", "chunks/s",
                 "ttfc p50 ms", "client CPU us/req"], rows))
    print()
    for (ratio, label), (cpu_ratio, _) in zip(ratios, cpu_ratios, strict=True):
        print(f"{label}: actor ({DEFAULT_TRANSPORT})/sdk throughput {ratio:.2f},"
              f" sdk/actor client CPU {cpu_ratio:.2f}")
    worst, where = min(ratios)
    print(f"provider/sdk throughput ratio: {worst:.2f}  (worst: {where})")


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description="the provider actor against the bare SDK")
    _parser.add_argument("seconds", nargs="?", type=float, default=SECONDS,
                         help=f"seconds per cell (default {SECONDS})")
    anyio.run(main, _parser.parse_args().seconds)
