"""Whole-runtime throughput (router, ledger, provider, metrics) against the bare SDK.

Both paths talk to the same simulator subprocess in the same run, with the same pool limits and
the same request body (the provider's default generation parameters included):
the bare path is one ``AsyncOpenAI`` client on an ``httpx2`` pool, and one on the SDK's aiohttp
transport (``openai[aiohttp]``) when installed: the ratio is against the faster of the two; the
runtime path is ``open_runtime`` with one provider (cost limits on, so every request reserves
and settles in the ledger, and every attempt is a metrics event).

Each cell (mode, concurrency) first warms every path up (``WARMUP`` seconds at the cell's
concurrency: the pools open their connections outside the measurement), then runs ``ROUNDS``
rounds of ``DURATION`` seconds per path, the paths in a rotated order each round (none always
first). A round's ratio is the runtime's throughput over the faster bare SDK's in that same round
(paired: the three ran back to back); the cell reports the **median of the rounds' ratios**, each
path's median throughput, latencies over all its rounds, and its CPU per request (this process's
CPU time, threads included, over the requests: steadier than throughput on a shared machine,
where a starved simulator caps every path alike and pulls the throughput ratios towards 1.0);
"vs SDK by CPU" is the cheaper bare SDK's CPU per request over the path's: what one core would
serve, relative to it.

``--gc-tuned``: the process runs with :func:`runtime.gc_tuning.tune_gc` (called once everything
is started, so both paths get it): what a server that tunes its collector at start-up measures.
Without it, CPython's defaults, where the collector's passes cost the streamed runtime ~400 us per
request here (see that module).

``--uvloop``: both paths on uvloop, the loop ``mcp-backend serve`` runs the runtime on (uvicorn's
standard extras); without it, asyncio's own loop.

Run: ``.venv/bin/python -m benchmarks.runtime [--gc-tuned] [--uvloop]``
"""

from __future__ import annotations

import argparse
import statistics
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
# What the runtime's provider sends from ProviderConfig's defaults: the bare SDK sends the same.
GENERATION: Any = {"temperature": 0.7, "top_p": 1.0, "presence_penalty": 0.0,
                   "frequency_penalty": 0.0}
DURATION = 2.0
WARMUP = 0.5
ROUNDS = 5
POOL = 256

Call = Callable[[], Awaitable[Any]]


async def _drive(call: Call, concurrency: int, seconds: float = DURATION
                 ) -> tuple[float, list[float], float]:
    """Closed-loop load: (requests/s, latencies, CPU seconds per request)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    cpu = time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    count = max(1, len(latencies))
    return (len(latencies) / (time.perf_counter() - start), latencies,
            (time.process_time() - cpu) / count)


async def _cell(mode: str, concurrency: int, paths: dict[str, Call],
                ratios: list[float]) -> list[list[object]]:
    """Warm every path up, run the rotated rounds, return the cell's rows (see the docstring)."""
    names = list(paths)
    for name in names:
        await _drive(paths[name], concurrency, WARMUP)
    runs: dict[str, list[tuple[float, list[float], float]]] = {name: [] for name in names}
    round_ratios: list[float] = []
    for index in range(ROUNDS):
        for name in names[index % len(names):] + names[:index % len(names)]:
            runs[name].append(await _drive(paths[name], concurrency))
        # Against the SDK on whichever of its transports is faster in this round.
        bare = max(runs[name][-1][0] for name in names if name != "runtime")
        round_ratios.append(runs["runtime"][-1][0] / bare)
    ratio = statistics.median(round_ratios)
    ratios.append(ratio)
    rates = {name: statistics.median(run[0] for run in runs[name]) for name in names}
    floor = max(rate for name, rate in rates.items() if name != "runtime")
    cpus = {name: statistics.median(run[2] for run in runs[name]) for name in names}
    cheapest = min(cpu for name, cpu in cpus.items() if name != "runtime")
    rows: list[list[object]] = []
    for name in names:
        latencies = [sample for run in runs[name] for sample in run[1]]
        rows.append([mode, concurrency, name, rates[name], percentile(latencies, 0.5) * 1000,
                     percentile(latencies, 0.99) * 1000, cpus[name] * 1e6,
                     ratio if name == "runtime" else rates[name] / floor, cheapest / cpus[name],
                     " ".join(f"{r:.2f}" for r in round_ratios) if name == "runtime" else ""])
    return rows


def _config(base_url: str, db: Path) -> LLMConfig:
    return LLMConfig.model_validate({
        "providers": {"sim": {
            "kind": "openai-compatible", "base_url": base_url, "model": MODEL,
            "requires_api_key": False, "max_tokens": 64, "max_connections": POOL,
            "max_keepalive_connections": POOL, "mailbox_size": 10_000,
        }},
        "cost": {"db_path": str(db), "daily_cost_limit": 1e9, "max_cost_per_request": 10.0},
    })


async def main(gc_tuned: bool = False, loop: str = "asyncio") -> None:
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
                            model=MODEL, messages=MESSAGES, max_tokens=64, **GENERATION)
                    return call

                def sdk_stream(sdk: openai.AsyncOpenAI) -> Callable[[], Awaitable[Any]]:
                    async def call() -> None:
                        stream = await sdk.chat.completions.create(
                            model=MODEL, messages=MESSAGES, max_tokens=64, **GENERATION,
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
                        rows.extend(await _cell(mode, concurrency, paths, ratios))
                summary = rt.metrics_summary()
            for sdk in sdks.values():
                await sdk.close()
    print(f"simulator subprocess; per cell {WARMUP:g}s warm-up per path, then {ROUNDS} rounds "
          f"of {DURATION:g}s per path in rotated order, medians; "
          f"runtime recorded {summary['total_requests']} requests; garbage collector: "
          f"{'tuned (runtime.gc_tuning)' if gc_tuned else 'CPython defaults'}; event loop: {loop}")
    print(table(["mode", "concurrency", "path", "req/s", "p50 ms", "p99 ms", "CPU us/req",
                 "vs SDK", "vs SDK by CPU", "rounds' ratios"], rows))
    by_cpu = [float(str(row[8])) for row in rows if row[2] == "runtime"]
    print(f"runtime/sdk throughput ratio (median of rounds, worst cell): {min(ratios):.2f}; "
          f"by CPU per request: {min(by_cpu):.2f}")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="the whole runtime against the bare SDK")
    parser.add_argument("--gc-tuned", action="store_true",
                        help="tune the collector as `mcp-backend serve` does (runtime.gc_tuning)")
    parser.add_argument("--uvloop", action="store_true",
                        help="run both paths on uvloop, the loop `serve` runs on")
    return parser.parse_args()


if __name__ == "__main__":
    _args = _options()
    anyio.run(main, _args.gc_tuned, "uvloop" if _args.uvloop else "asyncio",
              backend_options={"use_uvloop": _args.uvloop})
