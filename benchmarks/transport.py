"""The SDK's plain-data streaming path on two transports, and the cost of decoding one chunk.

1. Decoding (no I/O): one ~300-byte text chunk read into what the provider uses, per chunk:
   the SDK's ``ChatCompletionChunk`` model (``construct_type``, what ``create(stream=True)``
   builds), ``json.loads`` + ``decode_chunk`` (what ``AsyncStream[object]``
   yields, then ``msgspec.convert``), ``decode_chunk`` alone on the dict, and
   ``msgspec.json.decode`` straight from bytes (what reading the SSE ourselves would allow).
2. Transport: a real simulator (not paced, ``DELTAS`` deltas per stream) streamed through
   ``client.post(..., cast_to=object, stream=True, stream_cls=openai.AsyncStream[object])`` and
   read with ``decode_chunk`` + ``StreamAssembly``, at concurrency 1, 16 and 64, on the product's
   ``httpx2`` pool (``actors.llm._http_pool.provider_http_client``) and on the SDK's aiohttp
   transport (``openai.DefaultAioHttpClient``, needs ``openai[aiohttp]``), with the same limits.
   Per row: streams/s, this process's CPU per delta, p50/p99 stream time.

Runs on uvloop when it is installed (uvicorn's standard extras). Run:
``.venv/bin/python -m benchmarks.transport``
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import msgspec
import openai
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk

from actors.llm._http_pool import provider_http_client
from actors.llm._wire_decode import Chunk, StreamAssembly, decode_chunk
from benchmarks._report import percentile, table
from tests.server_harness import SimulatorChild

DELTAS = 100
CONCURRENCY = (1, 16, 64)
STREAMS_PER_RUN = {1: 60, 16: 320, 64: 640}
MODEL = "gpt-4o-mini"
CHUNK = (b'{"id":"chatcmpl-Bx1","object":"chat.completion.chunk","created":1764451200,'
         b'"model":"gpt-4o-mini-2024-07-18","service_tier":"default",'
         b'"system_fingerprint":"fp_560af6e559","choices":[{"index":0,"delta":'
         b'{"content":" lorem"},"logprobs":null,"finish_reason":null}],'
         b'"usage":null,"obfuscation":"x8kQ"}')


def _per_call_us(work: Callable[[], object], number: int = 20_000) -> float:
    return min(timeit.repeat(work, number=number, repeat=3)) / number * 1e6


def _decoding_rows() -> list[list[object]]:
    data = json.loads(CHUNK)
    rows: list[list[object]] = [
        ["SDK model (construct_type)", _per_call_us(
            lambda: construct_type(type_=ChatCompletionChunk, value=json.loads(CHUNK)), 5_000)],
        ["json.loads + decode_chunk", _per_call_us(lambda: decode_chunk(json.loads(CHUNK)))],
        ["decode_chunk (dict given)", _per_call_us(lambda: decode_chunk(data))],
    ]
    decoder = msgspec.json.Decoder(Chunk)
    rows.append(["msgspec.json.decode (bytes, no SDK SSE)", _per_call_us(
        lambda: decoder.decode(CHUNK))])
    return rows


async def _stream_once(client: openai.AsyncOpenAI, times: list[float]) -> int:
    started = time.perf_counter()
    stream = await client.post(
        "/chat/completions",
        body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
              "stream_options": {"include_usage": True}},
        cast_to=object, stream=True, stream_cls=openai.AsyncStream[object])
    assembly = StreamAssembly()
    deltas = 0
    async with stream:
        async for data in stream:
            if assembly.add(decode_chunk(data)):
                deltas += 1
    times.append(time.perf_counter() - started)
    return deltas


async def _run(name: str, http: httpx2.AsyncClient, url: str) -> list[list[object]]:
    rows: list[list[object]] = []
    async with openai.AsyncOpenAI(base_url=url, api_key="no-key-required", http_client=http,
                                  max_retries=0) as client:
        await _stream_once(client, [])  # warm the pool
        for concurrency in CONCURRENCY:
            total = STREAMS_PER_RUN[concurrency]
            times: list[float] = []
            counts: list[int] = []
            left = total

            async def worker(times: list[float], counts: list[int]) -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    counts.append(await _stream_once(client, times))

            cpu, started = time.process_time(), time.perf_counter()
            with anyio.fail_after(300):
                async with anyio.create_task_group() as group:
                    for _ in range(concurrency):
                        group.start_soon(worker, times, counts)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            rows.append([name, concurrency, total / elapsed, cpu / sum(counts) * 1e6,
                         percentile(times, 0.5) * 1000, percentile(times, 0.99) * 1000])
            print(f"{name} x{concurrency}: {rows[-1][2]:.0f} streams/s,"
                  f" {rows[-1][3]:.0f} us CPU/delta", flush=True)
    return rows


async def main() -> None:
    print(table(["decoding one chunk", "us per chunk"], _decoding_rows()), flush=True)
    limits = httpx2.Limits(max_connections=100, max_keepalive_connections=100,
                           keepalive_expiry=30)
    timeout = httpx2.Timeout(60, connect=10)
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as name:
        simulator = SimulatorChild({"models": {MODEL: {"reply_words": DELTAS}}},
                                   directory=Path(name))
        url = simulator.url.rstrip("/") + "/v1"
        try:
            rows += await _run("httpx2 pool", provider_http_client(limits, timeout), url)
            try:
                aiohttp_client: Any = openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
            except RuntimeError as exc:  # openai[aiohttp] not installed
                print(f"aiohttp transport skipped: {exc}")
            else:
                rows += await _run("aiohttp", aiohttp_client, url)
        finally:
            simulator.stop()
    print(f"{DELTAS}-delta streams, plain-data path (AsyncStream[object] + decode_chunk)")
    print(table(["transport", "concurrency", "streams/s", "client CPU us/delta",
                 "p50 stream ms", "p99 stream ms"], rows))


if __name__ == "__main__":
    anyio.run(main, backend_options={"use_uvloop": importlib.util.find_spec("uvloop") is not None})
