"""How many real-paced chat streams one server process holds (issue 11, item 6).

A real simulator paced like a model streaming at ~50 tokens/s (``DELTAS`` deltas, ``PACE`` s
apart) serves two targets, each a child process on 127.0.0.1:

* ``product``: a real ``mcp-backend serve`` (the test configuration: one provider at the
  simulator, the demo MCP server);
* ``floor``: ``benchmarks._relay``, a bare Starlette WebSocket relay with no actors on the same
  transport (the openai SDK's plain-data stream on the product's HTTP client, the same uvicorn).

Each on both HTTP transports under the SDK (``provider.transport``: ``httpx2``'s pool and the SDK's
aiohttp one), side by side: four targets, each its own process.

For each ``K``, ``K`` WebSocket clients (this process) run streaming turns back to back for
``DURATION`` s (a turn started before the end is finished). Per target and ``K``: turns/s, server
CPU per upstream delta and per turn (``/proc/PID/stat`` over the run), p99 time to the first text
frame, p50/p99 gap between text frames of a turn, server RSS at the end, failures (error
envelopes, timeouts, closed sockets). Each target serves one turn before the first run (its
once-per-process start costs are not a K's figures). A target whose run at some ``K``
saturates badly (p99 time to first text over ``GIVE_UP_TTFT`` s) is not run at larger ``K``.

The last lines, one per transport: ``streams per core at 50 tok/s on T: N (floor M)``, the
largest ``K`` whose run met the targets: server CPU <= 80% of one core, p99 gap <= 150 ms, p99
time to first text <= 1 s, turns/s at least 90% of ``K`` over its unloaded turn time, no failure (0
when none did); then ``by CPU per delta: ~X (floor ~Y)``, the streams 80% of a core would hold
at the median CPU per delta of that target's runs. On a machine shared with other work the
first can be starved by the scheduler (a process that gets 60% of a core while it needs more
falls behind) where the second, a ratio of CPU used to work done, holds.

On a small machine this process and the simulator share the CPU with the server: the table shows
their CPU seconds too, so a reader can tell which was the limit.

Run: ``.venv/bin/python -m benchmarks.streams [--quick] [--ks 50,100] [--duration S]
[--transports httpx2,aiohttp] [--targets product,floor]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import yaml

from benchmarks._load import PACE, run_clients, warm_up
from benchmarks._report import percentile, table
from tests.server_harness import ServerChild, SimulatorChild, _Child, write_config

DELTAS = 100
MODEL = "gpt-4o-mini"  # priced in the built-in catalog: the ledger admits it
KS = (50, 100, 200, 400)
QUICK_KS = (10, 25, 50)
DURATION = 20.0
QUICK_DURATION = 6.0
GIVE_UP_TTFT = 10.0
CPU_LIMIT = 0.80
GAP_LIMIT = 0.150
TTFT_LIMIT = 1.0
KEEP_UP = 0.9
TRANSPORTS = ("httpx2", "aiohttp")

_RELAY_BANNER = re.compile(r"relay listening on (http://\S+)")


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        raise RuntimeError("the child process is not running")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def _measure(name: str, pid: int, url: str, k: int, duration: float,
                   simulator: SimulatorChild) -> list[object]:
    cpu, cpu_sim, cpu_client = _cpu_seconds(pid), _cpu_seconds(simulator.pid), time.process_time()
    samples, elapsed = await run_clients(url, k, duration)
    cpu = _cpu_seconds(pid) - cpu
    cpu_sim = _cpu_seconds(simulator.pid) - cpu_sim
    cpu_client = time.process_time() - cpu_client
    turns = samples.turns
    failures = ", ".join(f"{kind} {n}" for kind, n in sorted(samples.failures.items())) or "none"
    return [
        name, k, turns, turns / elapsed,
        cpu / elapsed * 100,
        cpu / (turns * DELTAS) * 1e6 if turns else 0.0,
        cpu / turns * 1000 if turns else 0.0,
        percentile(samples.ttft, 0.99) * 1000,
        percentile(samples.gaps, 0.50) * 1000,
        percentile(samples.gaps, 0.99) * 1000,
        _rss_mib(pid),
        f"{cpu_sim:.1f} / {cpu_client:.1f}",
        failures,
    ]


def _best(rows: list[list[Any]], name: str, pace: dict[str, float]) -> int:
    fits = [row[1] for row in rows if row[0] == name and row[4] <= CPU_LIMIT * 100
            and row[9] <= GAP_LIMIT * 1000 and row[7] <= TTFT_LIMIT * 1000
            and row[3] >= KEEP_UP * row[1] / pace[name] and row[12] == "none"]
    return max(fits, default=0)


def _by_cpu(rows: list[list[Any]], name: str) -> int:
    """Streams that ``CPU_LIMIT`` of a core holds at the median CPU per delta of ``name``."""
    per_delta = [row[5] for row in rows if row[0] == name and row[2] > 0]
    if not per_delta:
        return 0
    return int(CPU_LIMIT * PACE * 1e6 / statistics.median(per_delta))


class _RelayChild(_Child):
    def __init__(self, upstream: str, transport: str, ws: str | None = None) -> None:
        super().__init__([sys.executable, "-m", "benchmarks._relay", "--upstream", upstream,
                          "--model", MODEL, "--transport", transport,
                          *(["--ws", ws] if ws else [])], banner=_RELAY_BANNER)
        self.wait_banner()
        self.ws_url = self.url.replace("http://", "ws://") + "/ws/chat"


def _server_config(directory: Path, simulator: SimulatorChild, transport: str,
                   connections: int) -> Path:
    """The product's config: the test one, this transport, a pool as large as the largest K
    (its own directory: each server has its own history and ledger)."""
    directory = directory / f"product-{transport}"
    directory.mkdir()
    path = write_config(directory, simulator_url=simulator.url, model=MODEL,
                        server={"max_messages_per_minute": 100_000},
                        chat={"history_db": str(directory / f"h-{uuid.uuid4().hex}.db")})
    config = yaml.safe_load(path.read_text())
    config["llm"]["providers"]["sim"].update(max_connections=connections,
                                             max_keepalive_connections=connections,
                                             transport=transport)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="paced streams per server process")
    parser.add_argument("--quick", action="store_true", help="smaller K, shorter runs")
    parser.add_argument("--ks", help="comma-separated K values (default: by --quick)")
    parser.add_argument("--duration", type=float, help="seconds per run (default: by --quick)")
    parser.add_argument("--transports", default=",".join(TRANSPORTS),
                        help=f"comma-separated, of {', '.join(TRANSPORTS)}")
    parser.add_argument("--targets", default="product,floor",
                        help="comma-separated, of product, floor and floor-legacy (the floor on"
                             " uvicorn's legacy `websockets` protocol)")
    return parser.parse_args()


async def main() -> None:
    options = _options()
    ks: tuple[int, ...] = QUICK_KS if options.quick else KS
    duration = QUICK_DURATION if options.quick else DURATION
    ks = tuple(int(k) for k in options.ks.split(",")) if options.ks else ks
    duration = options.duration or duration
    transports = [t for t in options.transports.split(",") if t]
    kinds = [t for t in options.targets.split(",") if t]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    rows: list[list[Any]] = []
    pace: dict[str, float] = {}  # an unloaded turn's seconds, by target
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as name:
        directory = Path(name)
        simulator = SimulatorChild({
            "models": {MODEL: {"context_window": 128_000, "reply_words": DELTAS,
                               "price_in": 0.15, "price_out": 0.6}},
            "faults": {"chunk_delay": PACE},
        }, directory=directory)
        children: list[_Child] = []
        try:
            targets: list[tuple[str, int, str]] = []
            for transport in transports:
                if "product" in kinds:
                    server = ServerChild(_server_config(directory, simulator, transport,
                                                        max(ks) + 16))
                    children.append(server)
                    assert server.pid is not None
                    targets.append((f"product {transport}", server.pid, server.ws_url))
                if "floor" in kinds:
                    relay = _RelayChild(simulator.url.rstrip("/") + "/v1", transport)
                    children.append(relay)
                    assert relay.pid is not None
                    targets.append((f"floor {transport}", relay.pid, relay.ws_url))
                if "floor-legacy" in kinds:
                    relay = _RelayChild(simulator.url.rstrip("/") + "/v1", transport, "websockets")
                    children.append(relay)
                    assert relay.pid is not None
                    targets.append((f"floor-legacy {transport}", relay.pid, relay.ws_url))
            for target, _, url in targets:
                pace[target] = await warm_up(url)
            saturated: set[str] = set()
            for k in ks:
                for target, pid, url in targets:
                    if target in saturated:
                        continue
                    rows.append(await _measure(target, pid, url, k, duration, simulator))
                    row = rows[-1]
                    print(f"{target} K={k}: {row[3]:.1f} turns/s, CPU {row[4]:.0f}%,"
                          f" {row[5]:.0f} us/delta, p99 first text {row[7]:.0f} ms", flush=True)
                    if row[7] > GIVE_UP_TTFT * 1000 or row[2] == 0:
                        saturated.add(target)
        finally:
            for child in reversed(children):
                child.stop()
            simulator.stop()
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(f"{DELTAS} deltas {PACE * 1000:.0f} ms apart per turn; {duration:.0f} s per run;"
          f" uvicorn loop: {loop}; an unloaded turn: "
          + ", ".join(f"{target} {seconds:.2f} s" for target, seconds in pace.items()))
    print(table(["target", "K", "turns", "turns/s", "server CPU %", "CPU us/delta",
                 "CPU ms/turn", "p99 first text ms", "p50 gap ms", "p99 gap ms",
                 "server RSS MiB", "CPU s sim / client", "failures"], rows))
    for transport in transports:
        product, floor = f"product {transport}", f"floor {transport}"
        print(f"streams per core at 50 tok/s on {transport}: {_best(rows, product, pace)}"
              f" (floor {_best(rows, floor, pace)}); by CPU per delta: ~{_by_cpu(rows, product)}"
              f" (floor ~{_by_cpu(rows, floor)})")


if __name__ == "__main__":
    # The clients on uvloop too (the server runs on it): the load generator shares this machine's
    # two cores with the server, and its CPU is not the product's.
    anyio.run(main, backend_options={"use_uvloop": importlib.util.find_spec("uvloop") is not None})
