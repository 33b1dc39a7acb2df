"""Simulator throughput: chat completions per second and streamed chunks per second.

The simulator runs as a child process (``simulator.process.SimulatorProcess``); 64 concurrent
workers drive it through one raw ``httpx2.AsyncClient`` pool (cheaper per request than the SDK)
for ``SECONDS`` each: non-streaming completions, then streamed ones of ``sim-long`` (200 words,
204 SSE events each). The table shows the CPU used by the server and by the client: on this
2-core machine a server well below one core means the client, not the simulator, is the limit.

For scale, the same non-streaming load runs against a minimal Starlette endpoint on uvicorn
(``h11``, the parser uvicorn uses when ``httptools`` is absent) answering a fixed JSON body: the
ceiling a Starlette simulator could not exceed.

Then the workload the stream benchmarks put on it: ``PACED_STREAMS`` streams at once, each of
``PACED_WORDS`` words ``PACE`` s apart (a model at ~50 tokens/s), back to back for
``PACED_SECONDS``: the simulator's CPU per paced event is what it takes from a server it shares a
machine with (``simulator/_pacing.py`` writes them all from one timer).

Run: ``.venv/bin/python -m benchmarks.simulator``
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx2

from benchmarks._report import percentile, table
from simulator.process import SimulatorProcess

CONCURRENCY = 64
SECONDS = 3.0
KEY = "sk-bench"
REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
STREAM_REQUEST = {**REQUEST, "model": "sim-long", "stream": True}
PACED_STREAMS, PACED_WORDS, PACE, PACED_SECONDS = 100, 100, 0.020, 10.0
PACED_REQUEST = {**REQUEST, "model": "paced", "stream": True}
_TICKS = os.sysconf("SC_CLK_TCK")

_STARLETTE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
BODY = sys.argv[2].encode()
async def chat(request):
    await request.json()
    return Response(BODY, media_type="application/json")
app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", http="h11",
            loop="asyncio")
"""

Call = Callable[[httpx2.AsyncClient], Awaitable[int]]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _completion(http: httpx2.AsyncClient) -> int:
    response = await http.post("/chat/completions", json=REQUEST)
    response.raise_for_status()
    return 0


async def _stream(http: httpx2.AsyncClient) -> int:
    async with http.stream("POST", "/chat/completions", json=STREAM_REQUEST) as response:
        response.raise_for_status()
        data = await response.aread()
    return data.count(b"data: ")


async def _paced_stream(http: httpx2.AsyncClient) -> int:
    async with http.stream("POST", "/chat/completions", json=PACED_REQUEST) as response:
        response.raise_for_status()
        data = await response.aread()
    return data.count(b"data: ")


async def _load(base_url: str, server_pid: int, call: Call, concurrency: int = CONCURRENCY,
                seconds: float = SECONDS) -> dict[str, float]:
    latencies: list[float] = []
    chunks = 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(
        base_url=base_url, limits=limits, timeout=30,
        headers={"Authorization": f"Bearer {KEY}"},
    ) as http:
        await call(http)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal chunks
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                received = await call(http)
                chunks += received
                latencies.append(time.perf_counter() - start)

        server_cpu, client_cpu = _cpu_seconds(server_pid), time.process_time()
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
                if call is _paced_stream:  # staggered: the streams do not tick in lockstep
                    await anyio.sleep(PACE / concurrency)
        elapsed = time.perf_counter() - start
        server_cpu = _cpu_seconds(server_pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "chunks_per_s": chunks / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "server_cpu": 100 * server_cpu / elapsed,
        "server_us_per_request": 1e6 * server_cpu / max(1, len(latencies)),
        "server_us_per_chunk": 1e6 * server_cpu / max(1, chunks),
        "client_cpu": 100 * client_cpu / elapsed,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _starlette_reference(body: bytes) -> dict[str, float]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = await anyio.open_process(
        [sys.executable, "-c", _STARLETTE_APP, str(port), body.decode()],
        stdin=subprocess.DEVNULL, stdout=None, stderr=None,
    )
    try:
        async with httpx2.AsyncClient() as probe:
            with anyio.fail_after(10):
                while True:
                    try:
                        await probe.get(url)
                        break
                    except httpx2.ConnectError:
                        await anyio.sleep(0.1)
        return await _load(f"{url}/v1", process.pid, _completion)
    finally:
        with anyio.CancelScope(shield=True):
            process.terminate()
            await process.wait()
            await process.aclose()


async def run() -> tuple[float, float, float]:
    async with SimulatorProcess() as sim:
        assert sim.pid is not None
        plain = await _load(sim.base_url, sim.pid, _completion)
        streamed = await _load(sim.base_url, sim.pid, _stream)
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
            sample = (await http.post(f"{sim.base_url}/chat/completions", json=REQUEST)).content
    async with SimulatorProcess({"models": {"paced": {"reply_words": PACED_WORDS}},
                                 "faults": {"chunk_delay": PACE}}) as sim:
        assert sim.pid is not None
        paced = await _load(sim.base_url, sim.pid, _paced_stream, PACED_STREAMS, PACED_SECONDS)
    reference = await _starlette_reference(sample)
    rows = [
        [name, int(r["requests"]), r["rps"], r["chunks_per_s"], r["p50_ms"], r["p99_ms"],
         f"{r['server_cpu']:.0f}%", r["server_us_per_request"], f"{r['client_cpu']:.0f}%"]
        for name, r in (("simulator, non-streaming", plain),
                        ("simulator, streaming 200 words", streamed),
                        (f"simulator, {PACED_STREAMS} paced streams ({PACED_WORDS} words,"
                         f" {PACE * 1000:.0f} ms apart)", paced),
                        ("reference: Starlette+uvicorn(h11), fixed JSON", reference))
    ]
    print(f"concurrency {CONCURRENCY}, {SECONDS:g} s per workload ({PACED_STREAMS} streams,"
          f" {PACED_SECONDS:g} s paced), raw httpx2 client")
    print(table(["workload", "requests", "req/s", "chunks/s", "p50 ms", "p99 ms",
                 "server CPU", "server us/request", "client CPU"], rows))
    return plain["rps"], streamed["chunks_per_s"], paced["server_us_per_chunk"]


def main() -> None:
    rps, chunks, paced = anyio.run(run)
    print(f"simulator: {rps:,.0f} req/s non-streaming, {chunks:,.0f} chunks/s streaming,"
          f" {paced:.1f} us of CPU per paced event")


if __name__ == "__main__":
    main()
