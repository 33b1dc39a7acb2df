"""This worker's part of a cluster (``cluster.redis_url`` set): shared state, heartbeat, health.

:func:`open_cluster` yields a :class:`ClusterNode` (or ``None`` without ``redis_url``): the Redis
link, the :class:`~actors.llm.SharedState` the LLM runtime shares its windows and ledger through,
the conversation leases of the sessions, and a heartbeat task. Every second the worker writes its
heartbeat into one Redis hash (entries older than :data:`HEARTBEAT_TTL` are dropped by the same
script) and reads back every live worker of every instance on the same Redis and ``key_prefix``,
and the round trip's latency: ``/health`` and ``/metrics`` serve that snapshot without waiting on
Redis, so a slow or stopped Redis never makes them hang.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette

from actors.chat import SharedTurnLeases
from actors.cluster import (
    ClusterConfig,
    ClusterHealth,
    ClusterUnavailable,
    ConversationLeases,
    RedisLink,
)
from actors.llm import SharedState

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TTL",
    "ClusterCollector",
    "ClusterNode",
    "WorkerIdentity",
    "open_cluster",
]

logger = logging.getLogger("server.cluster")

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL = 3.0
"""Seconds after its last heartbeat when a worker no longer counts as up."""

# KEYS[1] the workers hash; ARGV: id, info (JSON), ttl (ms). Redis's clock decides who is alive.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], now .. '|' .. ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local value = all[i + 1]
  local sep = string.find(value, '|', 1, true)
  local seen = tonumber(string.sub(value, 1, sep - 1))
  if now - seen > ttl then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = string.sub(value, sep + 1)
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 10)
return live
"""


@dataclass(frozen=True)
class WorkerIdentity:
    """Which worker of which instance this process is (set by ``serve --workers``)."""

    instance: str
    index: int = 0

    @classmethod
    def from_environment(cls) -> WorkerIdentity:
        """``MCP_BACKEND_INSTANCE`` / ``MCP_BACKEND_WORKER`` (default: this host and pid, 0)."""
        instance = os.environ.get("MCP_BACKEND_INSTANCE") or f"{socket.gethostname()}:{os.getpid()}"
        return cls(instance, int(os.environ.get("MCP_BACKEND_WORKER", "0")))

    @property
    def name(self) -> str:
        return f"{self.instance}/w{self.index}"


@dataclass
class _Snapshot:
    redis: ClusterHealth = field(default_factory=lambda: ClusterHealth(False, None, "not yet"))
    workers: list[dict[str, Any]] = field(default_factory=list)
    checked_at: float | None = None


class ClusterNode:
    """This worker in the cluster (module docstring). Made by :func:`open_cluster`."""

    def __init__(self, config: ClusterConfig, link: RedisLink, worker: WorkerIdentity, *,
                 journal: str | None, lease_timeout: float) -> None:
        self.config = config
        self.link = link
        self.worker = worker
        # The ledger's instance id names its journal (the ledger file) as long as it lives.
        basis = journal if journal is not None else f"{worker.name}:{os.getpid()}:{time.time()}"
        digest = hashlib.sha256(f"{socket.gethostname()}:{basis}".encode()).hexdigest()[:16]
        self.shared = SharedState(link, f"journal-{digest}")
        owner = f"{worker.name}:{os.getpid()}"
        self.leases = SharedTurnLeases(ConversationLeases(link, owner), timeout=lease_timeout)
        self._heartbeat = link.script(_HEARTBEAT)
        self._snapshot = _Snapshot()
        self._info = json.dumps({"instance": worker.instance, "worker": worker.index,
                                 "pid": os.getpid(), "started": round(time.time(), 3)})

    async def beat(self) -> None:
        """One heartbeat: write ours, read everyone's, time the round trip. Never raises for an
        outage (the snapshot says Redis is down)."""
        started = time.perf_counter()
        try:
            live = await self.link.run(self._heartbeat, "heartbeat",
                                       [self.link.key("workers")],
                                       [self.worker.name, self._info, round(HEARTBEAT_TTL * 1000)])
        except ClusterUnavailable as exc:
            if self._snapshot.redis.ok:
                logger.warning("cluster: Redis unavailable (%s): requests fail closed", exc.reason)
            self._snapshot = _Snapshot(ClusterHealth(False, None, exc.reason), [], time.time())
            return
        latency = round((time.perf_counter() - started) * 1000, 3)
        if not self._snapshot.redis.ok and self._snapshot.checked_at is not None:
            logger.warning("cluster: Redis is reachable again")
        workers = sorted((json.loads(raw) for raw in live),
                         key=lambda w: (str(w["instance"]), int(w["worker"])))
        self._snapshot = _Snapshot(ClusterHealth(True, latency), workers, time.time())

    async def run(self) -> None:
        """Heartbeat every :data:`HEARTBEAT_INTERVAL` seconds, until cancelled."""
        while True:
            await self.beat()
            await anyio.sleep(HEARTBEAT_INTERVAL)

    def health(self) -> dict[str, Any]:
        """The ``/health`` section: Redis (ok, latency, error) and the live workers."""
        snapshot = self._snapshot
        return {
            "worker": self.worker.name,
            "redis": snapshot.redis.as_dict(),
            "workers": snapshot.workers,
            "workers_up": len(snapshot.workers),
        }

    def __repr__(self) -> str:
        return f"<ClusterNode {self.worker.name} {self.link!r}>"


@asynccontextmanager
async def open_cluster(config: ClusterConfig, *, journal: str | Path | None,
                       lease_timeout: float,
                       worker: WorkerIdentity | None = None) -> AsyncIterator[ClusterNode | None]:
    """This worker's :class:`ClusterNode` (``None`` without Redis).

    ``journal``: this worker's ledger file (names its share of the day's totals). Starting does
    not need Redis to be up: requests fail closed until it is. The caller runs
    :meth:`ClusterNode.run` (the heartbeat) once the worker serves, so that ``workers_up`` never
    counts a worker still starting.
    """
    if not config.enabled:
        yield None
        return
    async with RedisLink(config) as link:
        yield ClusterNode(config, link, worker or WorkerIdentity.from_environment(),
                          journal=None if journal is None else str(journal),
                          lease_timeout=lease_timeout)


class ClusterCollector(Collector):
    """``mcp_backend_redis_up`` and ``mcp_backend_workers_up`` (by instance), from the snapshot."""

    def __init__(self, app: Starlette) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        node: ClusterNode | None = getattr(self._app.state, "cluster", None)
        if node is None:
            return
        health = node.health()
        yield GaugeMetricFamily("mcp_backend_redis_up", "Whether the shared Redis answered the"
                                " last heartbeat", value=1.0 if health["redis"]["ok"] else 0.0)
        workers = GaugeMetricFamily("mcp_backend_workers_up", "Workers whose heartbeat is live,"
                                    " by instance", labels=["instance"])
        counts: dict[str, int] = {}
        for entry in health["workers"]:
            counts[str(entry["instance"])] = counts.get(str(entry["instance"]), 0) + 1
        for instance, count in sorted(counts.items()):
            workers.add_metric([instance], float(count))
        yield workers
