"""The seventh review across the ledger's two halves: a worker killed (SIGKILL, a real process) or
its runtime stopped while it held reservations drawn from its allowance, then restarted on the
same journal, on a real redis-server. Each dollar is charged once in Redis's day (the killed
worker's allowance over-counts at most its free part, never less), and a Redis restarted empty
re-seeds the journal's charge of the leftover holds exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pydantic
import pytest

from actors.cluster import ClusterConfig, ClusterUnavailable, LedgerLimits, RedisLink, SharedLedger
from actors.llm import CostConfig, ModelCatalog, ModelPrice, _ledger_persistence
from actors.llm._ledger import ledger_child_spec
from actors.llm._ledger_store import LedgerStore
from actors.llm._messages import Reservation, Reserve, Settle, Usage
from actors.llm._shared_ledger import SharedLedgerActor
from runtime import ActorSystem, SupervisorSpec
from tests.cluster.test_allowance import (
    CENT,
    DAY,
    _journal,
    _open_epoch,
    _spec,
    _until_held,
    _worker,
)
from tests.redis_server import RedisServer

#: The allowance's TTL in these tests (model_copy: below the configured minimum on purpose).
_TTL = 2.0


async def _totals(observer: SharedLedger, want: tuple[int, int], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        with contextlib.suppress(ClusterUnavailable):  # reconnecting to a restarted Redis
            await observer.release("sweep", DAY)  # Redis expires what is due in a sweep
            if await observer.totals(DAY) == want:
                return
        await anyio.sleep(0.05)
    raise AssertionError(f"Redis never read {want}: {await observer.totals(DAY)}")


def _holds(path: Path) -> int:
    with sqlite3.connect(path) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM holds").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def _journal_total(path: Path) -> int:
    store = LedgerStore(path)
    try:
        return round(store.day_total(DAY) * 1e9)
    finally:
        store.close()


async def _child(redis_url: str, tmp: Path) -> None:
    """The worker to kill: r0 settled through Redis, r1 and r2 drawn from its allowance."""
    config = ClusterConfig(redis_url=redis_url, key_prefix="test").model_copy(update={
        "reservation_ttl": _TTL, "journal_interval": 5.0})
    async with RedisLink(config) as link, ActorSystem(_spec(tmp, link, "a", 1.00)) as system:
        observer = SharedLedger(link, "observer", _journal, LedgerLimits())
        ledger = system.ref("ledger")
        first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
        await _until_held(observer, 9 * CENT)  # r0 and an allowance of 8 cents
        assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
        await _totals(observer, (CENT, 8 * CENT))
        for index in (1, 2):
            await ledger.ask(Reserve(f"r{index}", "p", "m", 0, 1), timeout=10)
        for _ in range(200):  # bounded: 10 s, until both holds are journaled
            if _holds(tmp / "a.sqlite3") == 2:
                break
            await anyio.sleep(0.05)
        assert await observer.totals(DAY) == (CENT, 8 * CENT)  # drawn: no call
        print("READY", flush=True)
        await anyio.sleep(60)


def _spawn(redis_server: RedisServer, tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.test_review7_crash_money", redis_server.url,
         str(tmp)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2])


def _kill_when_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    try:
        line = child.stdout.readline()  # bounded by the child's own 10 s waits
        assert line.strip() == "READY", (line, child.stderr.read() if child.stderr else "")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=10)


@pytest.mark.timeout(60)
async def test_a_killed_worker_restarted_on_its_journal_is_charged_once_in_redis(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    async with RedisLink(cluster_config) as fast:
        await _open_epoch(fast)
        observer = SharedLedger(fast, "observer", _journal, LedgerLimits())
        _kill_when_ready(_spawn(redis_server, tmp_path))
        # r0 charged; the allowance (r1, r2 and 6 cents free) held until its TTL.
        assert await observer.totals(DAY) == (CENT, 8 * CENT)
        config = cluster_config.model_copy(update={"reservation_ttl": _TTL})
        async with RedisLink(config) as link, \
                ActorSystem(_spec(tmp_path, link, "a", 1.00)) as system:
            # The new process charged r1 and r2 what they held (their upstream may have billed).
            assert _journal_total(tmp_path / "a.sqlite3") == 3 * CENT
            assert _holds(tmp_path / "a.sqlite3") == 0
            # Redis charges the allowance it expired: r1, r2 and (the documented bound of a
            # killed worker) its free part, which nobody takes back. Never less than the journal.
            await _totals(observer, (9 * CENT, 0))
            ledger = system.ref("ledger")
            more: Reservation = await ledger.ask(Reserve("n1", "p", "m", 0, 1), timeout=10)
            assert await ledger.ask(Settle(more.id, Usage(), 0.01), timeout=10) == 0.01
            await _totals(observer, (10 * CENT, 8 * CENT))
            # Redis restarted empty: the journal comes back once, leftover holds in it once.
            redis_server.stop()
            redis_server.start()
            await _totals(observer, (4 * CENT, 8 * CENT))
            await anyio.sleep(0.5)  # several seed ticks: seeded once
            assert (await observer.totals(DAY))[0] == 4 * CENT


@pytest.mark.timeout(60)
async def test_a_runtime_stopped_with_drawn_reservations_then_restarted_charges_them_once(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
) -> None:
    config = cluster_config.model_copy(update={"reservation_ttl": _TTL,
                                               "journal_interval": 5.0})
    async with RedisLink(cluster_config) as fast, RedisLink(config) as link:
        await _open_epoch(fast)
        observer = SharedLedger(fast, "observer", _journal, LedgerLimits())
        async with ActorSystem(_spec(tmp_path, link, "a", 1.00)) as system:
            ledger = system.ref("ledger")
            first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
            await _until_held(observer, 9 * CENT)
            assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
            await _totals(observer, (CENT, 8 * CENT))
            for index in (1, 2):
                await ledger.ask(Reserve(f"r{index}", "p", "m", 0, 1), timeout=10)
        # Stopped unsettled: the free part given back, r1 and r2 still held in Redis.
        assert await observer.totals(DAY) == (CENT, 2 * CENT)
        assert _holds(tmp_path / "a.sqlite3") == 2
        async with ActorSystem(_spec(tmp_path, link, "a", 1.00)):
            assert _journal_total(tmp_path / "a.sqlite3") == 3 * CENT
            await _totals(observer, (3 * CENT, 0))  # at their TTL: charged once
            await anyio.sleep(0.3)
            assert await observer.totals(DAY) == (3 * CENT, 0)


@pytest.mark.timeout(60)
async def test_a_restarted_worker_whose_journal_is_unreadable_seeds_redis_only_once_read(
    tmp_path: Path, redis_server: RedisServer, cluster_config: ClusterConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Redis restarted empty while the worker was away, and its database is locked (a backup)
    # when it starts. Before: its seed timer offered the empty book it had ($0), Redis marked
    # the journal as seeded, and the day never counted the $0.03 the file holds.
    monkeypatch.setattr(_ledger_persistence, "_REOPEN_INTERVAL", 0.3)
    config = cluster_config.model_copy(update={"reservation_ttl": _TTL})
    path = tmp_path / "a.sqlite3"
    async with RedisLink(cluster_config) as fast, RedisLink(config) as link:
        await _open_epoch(fast)
        observer = SharedLedger(fast, "observer", _journal, LedgerLimits())
        async with ActorSystem(_spec(tmp_path, link, "a", 1.00)) as system:
            ledger = system.ref("ledger")
            first: Reservation = await ledger.ask(Reserve("r0", "p", "m", 0, 1), timeout=10)
            assert await ledger.ask(Settle(first.id, Usage(), 0.01), timeout=10) == 0.01
            for index in (1, 2):
                await ledger.ask(Reserve(f"r{index}", "p", "m", 0, 1), timeout=10)
        assert _holds(path) == 2
        redis_server.stop()
        redis_server.start()
        backup = sqlite3.connect(path, isolation_level=None)
        try:
            backup.execute("BEGIN EXCLUSIVE")
            catalog = ModelCatalog(prices={"m": ModelPrice(input=0.0, output=10_000.0)},
                                   builtin=False)
            spec = SupervisorSpec("root", [ledger_child_spec(
                CostConfig(db_path=str(path), daily_cost_limit=1.00), catalog,
                actor=lambda: _busy(_worker(tmp_path, link, "a", 1.00)))])
            async with ActorSystem(spec):
                await anyio.sleep(1.0)  # ~10 seed ticks while the file cannot be read
                backup.execute("ROLLBACK")
                await _totals(observer, (3 * CENT, 0))
                await anyio.sleep(0.3)
                assert await observer.totals(DAY) == (3 * CENT, 0)
        finally:
            backup.close()


def _busy(actor: SharedLedgerActor) -> SharedLedgerActor:
    actor.busy_timeout = 0.1  # a locked file fails fast
    return actor


def test_an_in_flight_ttl_below_the_permit_lease_is_refused_and_named() -> None:
    # Before: accepted; a permit leased ahead stopped counting in flight before its lease ended.
    with pytest.raises(pydantic.ValidationError, match=r"in_flight_ttl"):
        ClusterConfig(permit_lease=0.5, in_flight_ttl=0.4)
    assert ClusterConfig(permit_lease=0.5, in_flight_ttl=0.5).in_flight_ttl == 0.5


if __name__ == "__main__":  # the child process of the kill test
    anyio.run(_child, sys.argv[1], Path(sys.argv[2]))
