"""``serve --workers N`` with a shared Redis: real processes, a real redis-server, the simulator.

Two instances of two workers each share one Redis and one simulator. What the upstream receives
is counted at the simulator (its ``max_requests_in_window``), never inferred from our side.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from tests.redis_server import RedisServer
from tests.server_harness import (
    ROOT,
    ServerChild,
    SimulatorChild,
    chat,
    connect,
    http_get,
    pid_alive,
    server_env,
)

RPM = 6
LEASE_TTL = 2.0


def _config(directory: Path, simulator_url: str, redis_url: str | None, *,
            workers: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "workers": workers},
        "chat": {"history_db": str(directory / "history.sqlite3"), "max_tool_hops": 0},
        "mcpServers": {},
        "simulator": {"enabled": "never"},
        "llm": {
            "cost": {"db_path": str(directory / "ledger.sqlite3"), "daily_cost_limit": 100.0},
            "providers": {"sim": {
                "kind": "openai-compatible", "base_url": simulator_url + "/v1",
                "requires_api_key": False, "model": "gpt-4o-mini", "max_tokens": 64,
                "timeout": 2, "max_retries": 0,
                "rate_limits": {"requests_per_minute": RPM},
            }},
        },
    }
    if redis_url is not None:
        config["cluster"] = {"redis_url": redis_url, "key_prefix": "t", "lease_ttl": LEASE_TTL}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def _health(child: ServerChild) -> dict[str, Any]:
    """``/health``, or ``{}`` while no worker accepts yet (workers start in parallel, slowly)."""
    try:
        return child.health()
    except OSError:
        return {}


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorChild]:
    child = SimulatorChild({"seed": 1}, directory=tmp_path)
    try:
        yield child
    finally:
        child.stop()


def test_two_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    path = _config(tmp_path, "http://127.0.0.1:9", None)
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--config", str(path), "--workers", "2"],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("refusing to start 2 workers without cluster.redis_url:")


async def _turn(url: str, text: str, conversation_id: str) -> tuple[str, str]:
    ws = await connect(url)
    try:
        envelopes = await chat(ws, text, conversation_id=conversation_id)
    finally:
        await ws.close()
    last = envelopes[-1]
    detail = last["chunk"].get("error", {}) if last["status"] == "error" else {}
    return last["status"], str(detail.get("type", "")) if isinstance(detail, dict) else ""


async def _turns(urls: list[str], count: int) -> list[tuple[str, str]]:
    results: list[tuple[str, str]] = []

    async def one(index: int) -> None:
        results.append(await _turn(urls[index % len(urls)], f"hello {index}",
                                   f"load-{uuid.uuid4().hex[:8]}"))

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return results


def _holder(redis_server: RedisServer, conversation_id: str) -> str | None:
    out = subprocess.run(["redis-cli", "-p", str(redis_server.port), "HGET",
                          f"t:{{lease:{conversation_id}}}:holder", "owner"],
                         capture_output=True, text=True, timeout=10).stdout.strip()
    return out or None


# Six processes start on a shared 2-core machine: slower than the 60 s default allows.
@pytest.mark.timeout(180)
async def test_two_instances_of_two_workers_share_limits_leases_and_survive_faults(
        tmp_path: Path, simulator: SimulatorChild, redis_server: RedisServer) -> None:
    base = simulator.url
    first = ServerChild(_config(tmp_path / "a", base, redis_server.url), wait_healthy=False)
    second = ServerChild(_config(tmp_path / "b", base, redis_server.url), wait_healthy=False)
    try:
        health = _wait(lambda: (h := _health(first)).get("cluster", {}).get("workers_up") == 4
                       and h, "4 workers heartbeat", 90)
        assert {(w["instance"].rsplit(":", 1)[1], w["worker"]) for w in
                health["cluster"]["workers"]} == {
            (first.url.rsplit(":", 1)[1], 0), (first.url.rsplit(":", 1)[1], 1),
            (second.url.rsplit(":", 1)[1], 0), (second.url.rsplit(":", 1)[1], 1)}
        status, _, metrics = http_get(first.url + "/metrics")
        assert status == 200 and "mcp_backend_workers_up{" in metrics

        # A worker killed mid-turn: restarted by its parent, and its lease expires.
        simulator.configure({"faults": {"chunk_delay": 0.5}})
        ws = await connect(first.ws_url)
        await ws.send('{"action": "chat", "request_id": "r1", "payload": {"text": "long",'
                      ' "conversation_id": "killed"}}')
        owner = _wait(lambda: _holder(redis_server, "killed"), "the turn holds its lease")
        _wait(lambda: simulator.stats()["total_requests"] == 1, "its request is streaming")
        pid = int(owner.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        await ws.close()
        simulator.configure({"faults": {"chunk_delay": 0.0}})
        _wait(lambda: not pid_alive(pid), "the worker is dead", 10)
        _wait(lambda: len([w for w in _health(first).get("cluster", {}).get("workers", [])
                           if w["pid"] != pid]) == 4, "the worker is back (new pid)", 60)
        # The next turn of that conversation waits for the dead holder's lease to expire.
        started = time.monotonic()
        assert await _turn(second.ws_url, "after", "killed") == ("complete", "")
        assert time.monotonic() - started < LEASE_TTL + 10

        # Concurrent load on four workers: the upstream sees exactly RPM requests.
        urls = [first.ws_url, second.ws_url]
        results = await _turns(urls, 10)
        sent = simulator.stats()
        assert sent["total_requests"] == RPM
        assert sent["max_requests_in_window"] == RPM
        assert sorted(results).count(("complete", "")) == RPM - 2

        # Redis frozen: everything fails closed, /health says so, the upstream gets nothing.
        redis_server.pause()
        try:
            _wait(lambda: first.health().get("cluster", {}).get("redis", {}).get("ok") is False,
                  "health shows Redis down", 15)
            assert first.health()["status"] == "failing"
            results = await _turns(urls, 4)
            assert [status for status, _ in results] == ["error"] * 4
        finally:
            redis_server.resume()
        _wait(lambda: first.health().get("cluster", {}).get("redis", {}).get("ok") is True,
              "health shows Redis back", 15)
        results = await _turns(urls, 2)
        assert [status for status, _ in results] == ["error"] * 2  # the window is still full
        assert simulator.stats()["total_requests"] == RPM
        assert simulator.stats()["max_requests_in_window"] == RPM
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
