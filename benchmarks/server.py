"""The whole server under load: concurrent WebSocket sessions running streaming turns.

A real ``mcp-backend serve`` process (no MCP servers) talks to a real simulator process; this
process opens ``N`` WebSocket sessions (``websockets`` client) and each runs ``TURNS`` streaming
turns one after the other (a 24-word question, echoed back in 25 chunks). Reported per ``N``:
turns per second over the whole run, p50/p99 time to the first text chunk and to ``complete``,
and the server's resident memory per open session (RSS growth from before the sockets opened to
after every session had run a turn, divided by ``N``: the socket, its connection tasks and one
SessionActor with its history; measured after a warm-up of 20 turns on other sockets, so that
the upstream pool and the allocator's arenas are not counted against the sessions).

On a small machine the client shares the CPU with the server and the simulator: the table also
shows the CPU seconds each process used, so the reader can tell which one was the limit.

Run: ``.venv/bin/python -m benchmarks.server``
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

import anyio
from websockets.asyncio.client import ClientConnection

from benchmarks._report import percentile, table
from tests.server_harness import (
    ServerChild,
    SimulatorChild,
    chat_frame,
    connect,
    receive,
    send,
    write_config,
)

SESSIONS = (100, 1000)
TURNS = {100: 20, 1000: 5}
QUESTION = " ".join(f"w{i}" for i in range(24))
CONNECT_BATCH = 100
WARMUP_SOCKETS = 20


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        raise RuntimeError("the child process is not running")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class _Run:
    def __init__(self) -> None:
        self.first_chunk: list[float] = []
        self.completion: list[float] = []
        self.failures: dict[str, int] = {}


async def _turn(ws: ClientConnection, run: _Run) -> None:
    frame = chat_frame(QUESTION)
    started = time.perf_counter()
    await send(ws, frame)
    first: float | None = None
    while True:
        envelope = await receive(ws, timeout=120)
        status = envelope["status"]
        if status == "chunk" and first is None:
            first = time.perf_counter() - started
        elif status == "complete":
            run.completion.append(time.perf_counter() - started)
            if first is not None:
                run.first_chunk.append(first)
            return
        elif status == "error":
            kind = envelope["chunk"]["error_type"]
            run.failures[kind] = run.failures.get(kind, 0) + 1
            return


async def _measure(sessions: int, directory: Path) -> list[object]:
    simulator = SimulatorChild(directory=directory)
    config = write_config(
        directory,
        simulator_url=simulator.url,
        mcp_servers={},
        server={"max_messages_per_minute": 100_000},
        name=f"bench-{sessions}.yaml",
        chat={"history_db": str(directory / f"history-{uuid.uuid4().hex[:6]}.sqlite3")},
    )
    server = ServerChild(config)
    try:
        # Warm up (upstream pool, allocator, caches) on other sockets, so the RSS growth below is
        # what the sessions themselves cost.
        warmup = _Run()
        extra = [await connect(server.ws_url, ping_interval=None) for _ in range(WARMUP_SOCKETS)]
        async with anyio.create_task_group() as task_group:
            for ws in extra:
                task_group.start_soon(_turn, ws, warmup)
        for ws in extra:
            await ws.close()
        await anyio.sleep(1.0)
        rss_before = _rss_kib(server.pid)
        sockets = []
        for start in range(0, sessions, CONNECT_BATCH):
            batch = min(CONNECT_BATCH, sessions - start)
            async with anyio.create_task_group() as task_group:
                for _ in range(batch):
                    async def opened() -> None:
                        sockets.append(await connect(server.ws_url, ping_interval=None))
                    task_group.start_soon(opened)
        async with anyio.create_task_group() as task_group:
            for ws in sockets:
                task_group.start_soon(_turn, ws, warmup)
        await anyio.sleep(1.0)
        rss_after = _rss_kib(server.pid)

        run = _Run()
        turns = TURNS[sessions]
        cpu_server, cpu_sim = _cpu_seconds(server.pid), _cpu_seconds(simulator.pid)
        cpu_client = time.process_time()
        started = time.perf_counter()

        async def session(ws: ClientConnection) -> None:
            for _ in range(turns):
                await _turn(ws, run)

        async with anyio.create_task_group() as task_group:
            for ws in sockets:
                task_group.start_soon(session, ws)
        elapsed = time.perf_counter() - started
        cpu_server = _cpu_seconds(server.pid) - cpu_server
        cpu_sim = _cpu_seconds(simulator.pid) - cpu_sim
        cpu_client = time.process_time() - cpu_client
        for ws in sockets:
            await ws.close()
    finally:
        server.stop()
        simulator.stop()
    done = len(run.completion)
    failures = ", ".join(f"{k} {v}" for k, v in sorted(run.failures.items())) or "none"
    return [
        sessions,
        done,
        done / elapsed,
        percentile(run.first_chunk, 0.50) * 1000,
        percentile(run.first_chunk, 0.99) * 1000,
        percentile(run.completion, 0.50) * 1000,
        percentile(run.completion, 0.99) * 1000,
        (rss_after - rss_before) / sessions,
        f"{cpu_server:.1f} / {cpu_sim:.1f} / {cpu_client:.1f}",
        failures,
    ]


async def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # the children too
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-server-") as name:
        for sessions in SESSIONS:
            rows.append(await _measure(sessions, Path(name)))
            print(f"{sessions} sessions: {rows[-1][2]:.0f} turns/s", flush=True)
    print(f"{QUESTION.count(' ') + 1}-word questions, streaming; turns per session:"
          f" {', '.join(f'{n}: {t}' for n, t in TURNS.items())}")
    print(table(["sessions", "turns", "turns/s", "p50 first chunk ms", "p99 first chunk ms",
                 "p50 complete ms", "p99 complete ms", "RSS KiB/session",
                 "CPU s server/sim/client", "failures"], rows))
    last = rows[-1]
    print(f"server: {last[0]} sessions, {last[2]:.0f} turns/s, p99 first chunk {last[4]:.0f} ms,"
          f" {last[7]:.0f} KiB RSS per session")


if __name__ == "__main__":
    anyio.run(main)
