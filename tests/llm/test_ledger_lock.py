"""One process per ledger file: a second server on the same file is refused, with real processes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from actors.llm import CostConfig, LLMConfig, open_runtime
from actors.llm._ledger_lock import LedgerLock, LedgerUnavailable, check_ledger

ROOT = Path(__file__).resolve().parents[2]

# A second process that opens the runtime on the ledger file given as argv[1], says so, and holds
# the runtime open until its stdin closes.
HOLDER = """
import sys, anyio
from actors.llm import LLMConfig, open_runtime

async def main() -> None:
    config = LLMConfig.model_validate({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9",
                            "model": "gpt-4o-mini", "requires_api_key": False}},
        "cost": {"db_path": sys.argv[1]},
    })
    async with open_runtime(config):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)

anyio.run(main)
"""


def config(db_path: Path) -> LLMConfig:
    return LLMConfig.model_validate({
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9",
                            "model": "gpt-4o-mini", "requires_api_key": False}},
        "cost": {"db_path": str(db_path)},
    })


async def test_a_second_process_on_the_same_ledger_file_is_refused_until_the_first_dies(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "ledger.sqlite3"
    async with await anyio.open_process(
        [sys.executable, "-c", HOLDER, str(db_path)], cwd=ROOT,
    ) as holder:
        assert holder.stdout is not None
        with anyio.fail_after(30):
            assert (await holder.stdout.receive()).decode().strip() == "ready"
        expected = (
            f"the ledger database {str(db_path)!r} is in use by another process (pid "
            f"{holder.pid}); two servers on one ledger file would each spend the whole daily "
            "limit: give each its own cost.db_path, or share one budget through "
            "cluster.redis_url")
        with pytest.raises(LedgerUnavailable) as caught:
            async with open_runtime(config(db_path)):
                pass
        assert str(caught.value) == expected
        # A process killed without any cleanup leaves no stale lock behind.
        os.kill(holder.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            assert await holder.wait() == -signal.SIGKILL
    async with open_runtime(config(db_path)) as rt:
        assert (await rt.spend()).settled == 0.0
        assert rt.health()["ledger"]["state"] == "ok"


async def test_an_unusable_ledger_path_is_refused_at_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    await anyio.Path(blocker).write_text("not a directory")
    with pytest.raises(LedgerUnavailable, match=r"^the ledger database '.*/file/ledger\.sqlite3' "
                       r"cannot be used: \[Errno 17\] File exists: "):
        check_ledger(CostConfig(db_path=str(blocker / "ledger.sqlite3")))
    with pytest.raises(LedgerUnavailable):
        async with open_runtime(config(blocker / "ledger.sqlite3")):
            pass


def test_the_lock_is_reentrant_free_after_release_and_absent_without_persistence(
    tmp_path: Path,
) -> None:
    cost = CostConfig(db_path=str(tmp_path / "ledger.sqlite3"))
    with LedgerLock(cost) as lock:
        assert repr(lock) == f"<LedgerLock {str(tmp_path / 'ledger.sqlite3.lock')!r} [held]>"
        with pytest.raises(LedgerUnavailable, match=r"is in use by another process \(pid \d+\)"):
            LedgerLock(cost).acquire()
    with LedgerLock(cost):
        pass
    assert repr(LedgerLock(CostConfig(track_costs=False))) == "<LedgerLock None [free]>"
