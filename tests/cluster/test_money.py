"""Money and token limits across two instances of two workers, with and without Redis faults.

Real processes: one redis-server, three simulators (one per provider, so each counts what its
provider received), two ``serve --workers 2`` instances sharing the Redis. Prices are chosen so
that money is exact: input is free and output costs $0.001 a token, every answer is 10 words
(``max_tokens`` 10): a request reserves and spends exactly $0.01, a tool call $0.005.

The instances differ only in the order they try providers (A: ``a`` then ``c``; B: ``b`` only):
limits that refuse without a fallback (per provider daily) and limits that fall back (``a``'s
tokens per minute) can then each be the binding one in turn, in one start of the processes.
What was spent is counted at the simulators (``cost``, ``max_tokens_in_window``) and in Redis.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.redis_server import RedisServer
from tests.server_harness import ServerChild, SimulatorChild

from .processes import health_of, redis_hash, turn, turns, wait_for

CENT = 10_000_000  # nano-USD
PRICES = {"sim-model": {"input": 0.0, "output": 1000.0},
          "sim-big": {"input": 0.0, "output": 2000.0}}
MAX_PER_REQUEST = 0.015  # sim-big's worst case ($0.02) passes it, sim-model's ($0.01) does not
MAX_PER_TURN = 0.014  # a tool call ($0.005) + the answer's worst case ($0.01) passes it
DAILY = 0.10
B_DAILY = 0.03
A_TPM = 1200  # about three requests of this test (our estimate counts the tool schemas)


def _simulator_config() -> dict[str, Any]:
    return {"seed": 1, "models": {
        "sim-model": {"reply_words": 10, "price_in": 0.0, "price_out": 1000.0},
    }}


def _config(directory: Path, sims: dict[str, SimulatorChild], redis_url: str, *,
            active: str, order: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)

    def provider(name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kind": "openai-compatible", "base_url": sims[name].url + "/v1",
            "requires_api_key": False, "model": "sim-model", "max_tokens": 10, "timeout": 5,
            "max_retries": 0, "prices": PRICES, "fallback_models": ["sim-big"],
            "context_windows": {"sim-model": 128_000, "sim-big": 128_000},
        }
        if name == "a":
            entry["tokens_per_minute"] = A_TPM
        if name == "b":
            entry["daily_cost_limit"] = B_DAILY
        return entry

    config = {
        "server": {"host": "127.0.0.1", "port": 0, "workers": 2, "shutdown_timeout": 5},
        "chat": {"history_db": str(directory / "history.sqlite3"), "max_tool_hops": 1,
                 "max_cost_per_turn": MAX_PER_TURN},
        "mcpServers": {"demo": {"command": sys.executable,
                                "args": ["-m", "server.demo_mcp_server"]}},
        "simulator": {"enabled": "never"},
        "llm": {
            "providers": {name: provider(name) for name in ("a", "b", "c")},
            "active": active, "fallback_order": order, "request_timeout": 10,
            "cost": {"db_path": str(directory / "ledger.sqlite3"),
                     "max_cost_per_request": MAX_PER_REQUEST, "daily_cost_limit": DAILY},
        },
        # The default timeouts (1 s connect, 0.5 s a round trip): tighter ones fail turns on a
        # loaded 2-core machine, where a worker's loop may be late by more than that.
        "cluster": {"redis_url": redis_url, "key_prefix": "m", "journal_interval": 0.2},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[dict[str, SimulatorChild]]:
    children: dict[str, SimulatorChild] = {}
    try:
        for name in ("a", "b", "c"):
            children[name] = SimulatorChild(_simulator_config(), directory=tmp_path)
        yield children
    finally:
        for child in children.values():
            child.stop()


def _spent(sims: dict[str, SimulatorChild]) -> dict[str, int]:
    """Nano-USD each simulator charged (its ``cost``), and how many requests it received."""
    out: dict[str, int] = {}
    for name, sim in sims.items():
        stats = sim.stats()
        out[name] = round(stats["cost"] * 1e9)
        out[f"{name}#"] = stats["total_requests"]
    return out


def _day(redis_server: RedisServer) -> dict[str, int]:
    """The shared day: settled in total and per provider (seed markers left out)."""
    today = dt.datetime.now(dt.UTC).date().isoformat()
    return {field: int(value) for field, value in
            redis_hash(redis_server, f"m:{{ledger}}:day:{today}").items()
            if not field.startswith("seed:")}


def _window_tokens(redis_server: RedisServer) -> int:
    """Tokens that provider ``a``'s shared window holds now (every entry: ``permit -> tokens``)."""
    amounts = redis_hash(redis_server, "m:{rate:a}:amounts")
    return sum(int(value) for value in amounts.values())


# Eight processes start on a shared 2-core machine, and the test walks six phases.
@pytest.mark.timeout(240)
async def test_money_and_token_limits_hold_exactly_across_instances_and_redis_faults(
        tmp_path: Path, sims: dict[str, SimulatorChild], redis_server: RedisServer) -> None:
    children: list[ServerChild] = []  # stopped even when the second fails to start
    try:
        children.append(ServerChild(_config(tmp_path / "A", sims, redis_server.url, active="a",
                                            order=["a", "c"]), wait_healthy=False))
        children.append(ServerChild(_config(tmp_path / "B", sims, redis_server.url, active="b",
                                            order=["b"]), wait_healthy=False))
        first, second = children
        a_url, b_url = first.ws_url, second.ws_url
        wait_for(lambda: health_of(first).get("cluster", {}).get("workers_up") == 4,
                 "4 workers heartbeat", 120)

        # Per request: the worst case of sim-big passes max_cost_per_request; nothing is sent.
        assert await turn(a_url, "big", model="sim-big") == ("error", "cost_limit")
        assert _spent(sims) == {"a": 0, "a#": 0, "b": 0, "b#": 0, "c": 0, "c#": 0}

        # Per turn: the tool call is paid, the answer it would need passes max_cost_per_turn.
        assert await turn(a_url, 'call add {"a": 2, "b": 3}') == ("error", "cost_limit")
        assert _spent(sims) == {"a": CENT // 2, "a#": 1, "b": 0, "b#": 0, "c": 0, "c#": 0}

        # Per provider and day: b takes three requests of $0.01, B has nowhere else to go.
        results = await turns([b_url], 6)
        assert results == [("complete", "")] * 3 + [("error", "cost_limit")] * 3
        assert _spent(sims)["b"] == 3 * CENT

        # Tokens per minute and the day: a takes what its window holds, the rest falls back to
        # c, until the day's $0.10 is spent ($0.035 before: six more requests).
        results = await turns([a_url], 12)
        assert results == [("complete", "")] * 6 + [("error", "cost_limit")] * 6
        spent = _spent(sims)
        assert spent["a#"] >= 2 and spent["c#"] >= 1  # a's window bound, then c took over
        assert spent["a"] + spent["b"] + spent["c"] == round(DAILY * 1e9) - CENT // 2
        assert sims["a"].stats()["max_tokens_in_window"] <= A_TPM
        assert _window_tokens(redis_server) <= A_TPM
        before = _day(redis_server)
        assert before == {"settled": spent["a"] + spent["b"] + spent["c"], "p:a": spent["a"],
                          "p:b": spent["b"], "p:c": spent["c"]}

        # Redis frozen, then stopped: every turn fails closed, nothing reaches an upstream.
        redis_server.pause()
        try:
            wait_for(lambda: health_of(first).get("cluster", {}).get("redis", {}).get("ok")
                     is False, "health shows Redis frozen", 15)
            results = await turns([a_url, b_url], 4, "frozen")
        finally:
            redis_server.resume()
        assert [status for status, _ in results] == ["error"] * 4
        redis_server.stop()
        results = await turns([a_url, b_url], 4, "stopped")
        assert [status for status, _ in results] == ["error"] * 4
        assert _spent(sims) == spent

        # Restarted empty: turns at once (before any journal is back) wait until every worker
        # had the time to re-seed the day from its journal; then nothing more can be spent.
        redis_server.start()
        results = await turns([a_url, b_url], 6, "restarted")
        assert (results, _spent(sims), _day(redis_server)) == (
            [("error", "cost_limit")] * 6, spent, before)
        assert sims["a"].stats()["max_tokens_in_window"] <= A_TPM
    finally:
        codes = [child.stop() for child in children]
        for name, child in zip("AB", children, strict=False):
            (tmp_path / f"server-{name}.log").write_text(child.output)
        assert codes == [0] * len(children)
