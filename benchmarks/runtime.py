"""Whole-runtime throughput (router, ledger, provider, metrics) against the bare SDK.

Both paths talk to the same simulator subprocess in the same run, with the same pool limits:
the bare path is one ``AsyncOpenAI`` client on an ``httpx2`` pool, and one on the SDK's aiohttp
transport (``openai[aiohttp]``) when installed: the ratio is against the faster of the two; the
runtime path is ``open_runtime`` with one provider (cost limits on, so every request reserves
and settles in the ledger, and every attempt is a metrics event). Each cell is the best of
``ROUNDS`` runs, the paths alternating, so all see the same machine.

``--gc-tuned``: the process runs with :func:`runtime.gc_tuning.tune_gc` (called once everything
is started, so both paths get it): what a server that tunes its collector at start-up measures.
Without it, CPython's defaults, where the collector's passes cost the streamed runtime ~400 us per
request here (see that module).

Run: ``.venv/bin/python -m benchmarks.runtime [--gc-tuned]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import openai

from actors.llm import LLMConfig, open_runtime
from actors.llm._http_pool import aiohttp_available
from benchmarks._report import percentile, table
from runtime.gc_tuning import tune_gc
from simulator.process import SimulatorProcess

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "benchmark the whole runtime please"}]
DURATION = 3.0
ROUNDS = 2
POOL = 256

Call = Callable[[], Awaitable[Any]]


async def _drive(call: Call, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + DURATION

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return len(latencies) / (time.perf_counter() - start), latencies


def _config(base_url: str, db: Path) -> LLMConfig:
    return LLMConfig.model_validate({
        "providers": {"sim": {
            "kind": "openai-compatible", "base_url": base_url, "model": MODEL,
            "requires_api_key": False, "max_tokens": 64, "max_connections": POOL,
            "max_keepalive_connections": POOL, "mailbox_size": 10_000,
        }},
        "cost": {"db_path": str(db), "daily_cost_limit": 1e9, "max_cost_per_request": 10.0},
    })


async def main(gc_tuned: bool = False) -> None:
    rows: list[list[object]] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with SimulatorProcess() as sim:
            limits = httpx2.Limits(max_connections=POOL, max_keepalive_connections=POOL)
            http = {"httpx2": httpx2.AsyncClient(limits=limits, timeout=60)}
            if aiohttp_available():
                http["aiohttp"] = openai.DefaultAioHttpClient(limits=limits, timeout=60)
            sdks = {name: openai.AsyncOpenAI(base_url=sim.base_url, api_key="bench",
                                             max_retries=0, http_client=client)
                    for name, client in http.items()}
            async with open_runtime(_config(sim.base_url, Path(tmp) / "ledger.sqlite3")) as rt:
                if gc_tuned:
                    tune_gc()

                def sdk_call(sdk: openai.AsyncOpenAI) -> Callable[[], Awaitable[Any]]:
                    async def call() -> None:
                        await sdk.chat.completions.create(
                            model=MODEL, messages=MESSAGES, max_tokens=64)
                    return call

                def sdk_stream(sdk: openai.AsyncOpenAI) -> Callable[[], Awaitable[Any]]:
                    async def call() -> None:
                        stream = await sdk.chat.completions.create(
                            model=MODEL, messages=MESSAGES, max_tokens=64,
                            stream=True, stream_options={"include_usage": True})
                        async with stream:
                            async for _ in stream:
                                pass
                    return call

                async def rt_call() -> None:
                    await rt.chat(MESSAGES, max_tokens=64)

                async def rt_stream() -> None:
                    async with rt.stream(MESSAGES, max_tokens=64) as events:
                        async for _ in events:
                            pass

                for mode, bare, ours in (("non-streaming", sdk_call, rt_call),
                                         ("streaming", sdk_stream, rt_stream)):
                    for concurrency in (16, 256):
                        paths = {f"bare SDK {name}": bare(sdk) for name, sdk in sdks.items()}
                        paths["runtime"] = ours
                        best: dict[str, tuple[float, list[float]]] = {}
                        for _ in range(ROUNDS):
                            for name, call in paths.items():
                                result = await _drive(call, concurrency)
                                if name not in best or result[0] > best[name][0]:
                                    best[name] = result
                        # Against the SDK on whichever of its transports is faster here.
                        floor = max(best[name][0] for name in paths if name != "runtime")
                        for name in paths:
                            rate, lat = best[name]
                            rows.append([mode, concurrency, name, rate,
                                         percentile(lat, 0.5) * 1000,
                                         percentile(lat, 0.99) * 1000, rate / floor])
                        ratios.append(best["runtime"][0] / floor)
                summary = rt.metrics_summary()
            for sdk in sdks.values():
                await sdk.close()
    print(f"simulator subprocess, {DURATION:g}s per cell, best of {ROUNDS}; "
          f"runtime recorded {summary['total_requests']} requests; garbage collector: "
          f"{'tuned (runtime.gc_tuning)' if gc_tuned else 'CPython defaults'}")
    print(table(["mode", "concurrency", "path", "req/s", "p50 ms", "p99 ms", "vs SDK"], rows))
    print(f"runtime/sdk throughput ratio: {min(ratios):.2f}")


if __name__ == "__main__":
    anyio.run(main, "--gc-tuned" in sys.argv[1:])
