"""``serve --workers N`` with a shared Redis: real processes, a real redis-server, the simulator.

Two instances of two workers each share one Redis and one simulator. What the upstream receives
is counted at the simulator (its ``max_requests_in_window``), never inferred from our side.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from runtime.testing import FakeClock
from server.config import AppConfig
from server.workers import MAX_RESTARTS, _Parent, listen
from tests.redis_server import RedisServer
from tests.server_harness import (
    ROOT,
    ServerChild,
    SimulatorChild,
    connect,
    http_get,
    pid_alive,
    server_env,
)

from .processes import health_of, turn, turns, wait_for

RPM = 6
LEASE_TTL = 2.0


def _config(directory: Path, simulator_url: str, redis_url: str | None, *,
            workers: int = 2, history: Path | None = None) -> Path:
    """``history``: a history database shared with another instance (its conversations, issued
    by either, are known to both: a turn may move between them)."""
    directory.mkdir(parents=True, exist_ok=True)
    history_db = history or directory / "history.sqlite3"
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "workers": workers},
        "chat": {"history_db": str(history_db), "max_tool_hops": 0},
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
        config["cluster"] = {"redis_url": redis_url, "key_prefix": "t", "lease_ttl": LEASE_TTL,
                             "journal_interval": 0.2}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
def test_each_worker_gets_its_own_socket_on_one_port_and_the_kernel_spreads_connections() -> None:
    listeners = listen("127.0.0.1", 0, 3)
    clients: list[socket.socket] = []
    try:
        port = listeners[0].getsockname()[1]
        assert len({id(listener) for listener in listeners}) == 3
        assert [listener.getsockname() for listener in listeners] == [("127.0.0.1", port)] * 3
        assert all(listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
                   and listener.get_inheritable() for listener in listeners)
        for _ in range(60):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        accepted = [0, 0, 0]
        deadline = time.monotonic() + 10
        while sum(accepted) < 60 and time.monotonic() < deadline:
            ready, _, _ = select.select(listeners, [], [], 1.0)
            for listener in ready:
                connection, _ = listener.accept()
                connection.close()
                accepted[listeners.index(listener)] += 1
        # Every connection is accepted exactly once, and the kernel's hash spreads them: a socket
        # left without one of 60 happens with probability 3 * (2/3)**60, about 1e-10.
        assert sum(accepted) == 60 and min(accepted) >= 1, accepted
    finally:
        for sock in [*clients, *listeners]:
            sock.close()


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
def test_a_second_service_on_a_port_in_use_is_refused_instead_of_sharing_its_connections(
) -> None:
    first = listen("127.0.0.1", 0, 2)
    try:
        port = first[0].getsockname()[1]
        with pytest.raises(OSError) as refused:
            listen("127.0.0.1", port, 2)
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        for sock in first:
            sock.close()
    # Free again once the first one is gone.
    for sock in listen("127.0.0.1", port, 2):
        sock.close()


def test_without_reuse_port_every_worker_shares_one_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)
    listeners = listen("127.0.0.1", 0, 3)
    try:
        assert len({id(listener) for listener in listeners}) == 1 and len(listeners) == 3
    finally:
        listeners[0].close()


def _holder(redis_server: RedisServer, conversation_id: str) -> str | None:
    out = subprocess.run(["redis-cli", "-p", str(redis_server.port), "HGET",
                          f"t:{{lease:{conversation_id}}}:holder", "owner"],
                         capture_output=True, text=True, timeout=10).stdout.strip()
    return out or None


def _loopback_name() -> str:
    """This machine's name, when it resolves to 127.0.0.1 (the tests reach nothing else)."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = None
    if address != "127.0.0.1":
        pytest.skip(f"the host name {name!r} does not resolve to 127.0.0.1 here")
    return name


def test_workers_serve_the_host_name_given_with_host_as_one_process_does(
        tmp_path: Path, simulator: SimulatorChild, redis_server: RedisServer) -> None:
    name = _loopback_name()  # a name, not an address: only server.host lets it in
    config = _config(tmp_path, simulator.url, redis_server.url)  # server.host: 127.0.0.1
    token = "workers-host-token-1234"  # a name is not a loopback address: a token is required
    server = ServerChild(config, host=name, env={"MCP_BACKEND_TOKEN": token}, wait_healthy=False)

    def workers_up() -> int | None:
        try:
            up: int | None = server.health(token).get("cluster", {}).get("workers_up")
        except OSError:  # no worker accepts yet
            return None
        return up

    try:
        wait_for(lambda: workers_up() == 2, "2 workers heartbeat", 90)
        port = server.url.rsplit(":", 1)[1]
        # New connections, spread over both workers' sockets by the kernel.
        statuses = [http_get(server.url + "/health", headers={"Host": f"{name}:{port}"})[0]
                    for _ in range(20)]
    finally:
        assert server.stop() == 0, server.output
    assert statuses == [200] * 20


class _CrashingParent(_Parent):
    """The parent of one worker that runs ``runs_for`` seconds of clock time, then exits 1."""

    def __init__(self, clock: FakeClock, runs_for: float) -> None:
        super().__init__(AppConfig(), None, 1, "info", [], "test", clock=clock)
        self.runs_for = runs_for
        self.starts = 0

    async def _run_worker(self, index: int) -> int | None:
        self.starts += 1
        await self._clock.sleep(self.runs_for)
        return 1


async def _crash_loop(clock: FakeClock, parent: _CrashingParent, seconds: float) -> None:
    """Step the clock by 0.5 s for at most ``seconds`` while the parent keeps worker 0 running."""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(parent._keep_running, 0, group.cancel_scope)
            await anyio.wait_all_tasks_blocked()  # the first start, at time 0
            for _ in range(int(seconds / 0.5)):
                await clock.advance(0.5)
                if parent.failed:
                    break
            group.cancel_scope.cancel()


async def test_a_worker_crashing_at_start_is_escalated_after_max_restarts_despite_the_backoff(
) -> None:
    clock = FakeClock()
    parent = _CrashingParent(clock, runs_for=1.0)
    await _crash_loop(clock, parent, seconds=600)
    assert parent.failed is True
    assert parent.stopping is True
    assert parent.starts == MAX_RESTARTS + 1
    # 11 s of running and the backoffs between (0.5, 1, 2, 4, 8, then 10 s five times: 65.5 s
    # of waiting, more than RESTART_PERIOD, which must not hide the crash loop).
    assert clock.now() == 76.5


async def test_a_worker_that_runs_a_while_between_crashes_is_restarted_without_end() -> None:
    clock = FakeClock()
    parent = _CrashingParent(clock, runs_for=7.0)  # at most 9 exits in 60 s of running
    await _crash_loop(clock, parent, seconds=600)
    assert parent.failed is False
    assert parent.starts > 2 * MAX_RESTARTS


# Six processes start on a shared 2-core machine: slower than the 60 s default allows.
@pytest.mark.timeout(180)
async def test_two_instances_of_two_workers_share_limits_leases_and_survive_faults(
        tmp_path: Path, simulator: SimulatorChild, redis_server: RedisServer) -> None:
    base, history = simulator.url, tmp_path / "history.sqlite3"
    children: list[ServerChild] = []  # stopped even when the second fails to start
    try:
        for name in ("a", "b"):
            children.append(ServerChild(
                _config(tmp_path / name, base, redis_server.url, history=history),
                wait_healthy=False))
        first, second = children
        health = wait_for(lambda: (h := health_of(first)).get("cluster", {}).get("workers_up")
                          == 4 and h, "4 workers heartbeat", 90)
        assert {(w["instance"].rsplit(":", 1)[1], w["worker"]) for w in
                health["cluster"]["workers"]} == {
            (first.url.rsplit(":", 1)[1], 0), (first.url.rsplit(":", 1)[1], 1),
            (second.url.rsplit(":", 1)[1], 0), (second.url.rsplit(":", 1)[1], 1)}
        status, _, metrics = http_get(first.url + "/metrics")
        assert status == 200 and "mcp_backend_workers_up{" in metrics

        # A worker killed mid-turn: restarted by its parent, and its lease expires.
        simulator.configure(faults={"chunk_delay": 0.5})
        ws = await connect(first.ws_url)
        await ws.send('{"action": "chat", "request_id": "r1", "payload": {"text": "long"}}')
        processing = json.loads(await ws.recv())  # the server issues the conversation's id
        assert processing["status"] == "processing"
        killed = processing["chunk"]["metadata"]["conversation_id"]
        owner = wait_for(lambda: _holder(redis_server, killed), "the turn holds its lease")
        wait_for(lambda: simulator.stats()["total_requests"] == 1, "its request is streaming")
        assert owner is not None
        pid = int(owner.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        await ws.close()
        simulator.configure(faults={"chunk_delay": 0.0})
        wait_for(lambda: not pid_alive(pid), "the worker is dead", 10)
        wait_for(lambda: len([w for w in health_of(first).get("cluster", {}).get("workers", [])
                              if w["pid"] != pid]) == 4, "the worker is back (new pid)", 60)
        # The next turn of that conversation, on the other instance, waits for the dead
        # holder's lease to expire (LEASE_TTL), then completes.
        assert await turn(second.ws_url, "after", killed) == ("complete", "")

        # Concurrent load on four workers: the upstream sees exactly RPM requests.
        urls = [first.ws_url, second.ws_url]
        results = await turns(urls, 10)
        sent = simulator.stats()
        # The turns' outcomes in the message: what stopped a request that never left.
        assert (sent["total_requests"], sent["max_requests_in_window"]) == (RPM, RPM), results
        assert sorted(results).count(("complete", "")) == RPM - 2, results

        # Redis frozen: everything fails closed, /health says so, the upstream gets nothing.
        redis_server.pause()
        try:
            # Each worker keeps its own snapshot: the one answering must say both at once.
            wait_for(lambda: _says_redis_down(health_of(first)), "health shows Redis down", 15)
            results = await turns(urls, 4, "frozen")
            assert results == [("error", "unavailable")] * 4  # no lease: typed, retryable
        finally:
            redis_server.resume()
        wait_for(lambda: health_of(first).get("cluster", {}).get("redis", {}).get("ok") is True,
                 "health shows Redis back", 15)
        results = await turns(urls, 2, "resumed")
        assert [status for status, _ in results] == ["error"] * 2  # the window is still full
        assert simulator.stats()["total_requests"] == RPM
        assert simulator.stats()["max_requests_in_window"] == RPM
    except AssertionError as exc:  # a flake under load: what the servers said
        tails = "\n".join(f"--- instance {index} ---\n" + "\n".join(child.lines[-40:])
                          for index, child in enumerate(children))
        raise AssertionError(f"{exc}\n{tails}") from exc
    finally:
        assert [child.stop() for child in children] == [0] * len(children)


def _says_redis_down(health: dict[str, Any]) -> bool:
    redis = health.get("cluster", {}).get("redis", {})
    return redis.get("ok") is False and health.get("status") == "failing"
