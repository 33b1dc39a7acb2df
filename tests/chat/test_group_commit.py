"""GroupCommit: the appends that arrive while a write is under way are committed together, each
still all or none, every caller answered once, with its own result."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import GroupCommit, HistoryStore

pytestmark = pytest.mark.anyio


class _CountedStore(HistoryStore):
    """The real store; records the size of each batch it is given, and fails the batches
    numbered in ``failing`` as a disk would (the whole transaction)."""

    def __init__(self, path: Path, failing: Sequence[int] = ()) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []
        self._failing = set(failing)

    def append_batch(self, appends: Sequence[tuple[str, Sequence[dict[str, Any]]]]
                     ) -> list[Exception | None]:
        self.batches.append([conversation_id for conversation_id, _ in appends])
        if len(self.batches) in self._failing:
            raise sqlite3.OperationalError("disk I/O error")
        return super().append_batch(appends)


def _message(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


class _WriteLock:
    """Another connection holding the database's write lock: the store's next write waits."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self._db.execute("COMMIT")
        self._db.close()


async def _until_batches(store: _CountedStore, count: int) -> None:
    with anyio.fail_after(10):
        while len(store.batches) < count:
            await anyio.sleep(0.005)


async def test_appends_waiting_for_a_write_are_committed_together_in_arrival_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    with _CountedStore(path) as store:
        commit = GroupCommit(store)
        lock = _WriteLock(path)
        done: list[str] = []

        async def append(conversation_id: str, text: str) -> None:
            await commit.append(conversation_id, [_message(text)])
            done.append(text)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(append, "c1", "first")
            await _until_batches(store, 1)  # its thread waits for the lock
            for index in range(5):
                task_group.start_soon(append, f"c{index % 2}", f"then {index}")
            await anyio.wait_all_tasks_blocked()
            assert done == []
            lock.release()
        assert store.batches == [["c1"], ["c0", "c1", "c0", "c1", "c0"]]
        assert sorted(done) == ["first", *(f"then {i}" for i in range(5))]
        assert store.load("c0") == [_message("then 0"), _message("then 2"), _message("then 4")]
        assert store.load("c1") == [_message("first"), _message("then 1"), _message("then 3")]


async def test_an_append_alone_is_written_at_once(tmp_path: Path) -> None:
    with _CountedStore(tmp_path / "history.db") as store:
        commit = GroupCommit(store)
        await commit.append("c", [_message("a"), _message("b")])
        await commit.append("c", [_message("c")])
        assert store.batches == [["c"], ["c"]]
        assert [m["content"] for m in store.load("c")] == ["a", "b", "c"]


async def test_one_bad_append_fails_alone_and_the_others_of_its_batch_are_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    with _CountedStore(path) as store:
        commit = GroupCommit(store)
        lock = _WriteLock(path)
        outcomes: dict[str, str] = {}

        async def append(conversation_id: str, message: dict[str, Any]) -> None:
            try:
                await commit.append(conversation_id, [_message("kept?"), message])
            except TypeError as exc:
                outcomes[conversation_id] = f"TypeError: {exc}"
            else:
                outcomes[conversation_id] = "written"

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(append, "lead", _message("x"))
            await _until_batches(store, 1)
            task_group.start_soon(append, "good", _message("y"))
            task_group.start_soon(append, "bad", {"role": "user", "content": object()})
            task_group.start_soon(append, "also good", _message("z"))
            await anyio.wait_all_tasks_blocked()
            lock.release()
        assert store.batches == [["lead"], ["good", "bad", "also good"]]
        assert outcomes == {"lead": "written", "good": "written",
                            "bad": "TypeError: Object of type object is not JSON serializable",
                            "also good": "written"}
        assert store.load("bad") == []  # all or none: not even its first message
        assert store.load("good") == [_message("kept?"), _message("y")]
        assert store.load("also good") == [_message("kept?"), _message("z")]


async def test_a_failed_transaction_fails_every_append_of_its_batch_and_the_next_batch_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    with _CountedStore(path, failing=[2]) as store:
        commit = GroupCommit(store)
        lock = _WriteLock(path)
        outcomes: dict[str, str] = {}

        async def append(conversation_id: str) -> None:
            try:
                await commit.append(conversation_id, [_message(conversation_id)])
            except sqlite3.OperationalError as exc:
                outcomes[conversation_id] = str(exc)
            else:
                outcomes[conversation_id] = "written"

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(append, "lead")
            await _until_batches(store, 1)
            for name in ("b", "c"):
                task_group.start_soon(append, name)
            await anyio.wait_all_tasks_blocked()
            lock.release()
        assert outcomes == {"lead": "written", "b": "disk I/O error", "c": "disk I/O error"}
        assert (store.load("b"), store.load("c")) == ([], [])
        await commit.append("d", [_message("d")])  # not stuck: the next append is written
        assert store.batches == [["lead"], ["b", "c"], ["d"]]
        assert store.load("d") == [_message("d")]


async def test_a_cancelled_caller_sees_its_append_written_before_the_cancellation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    with _CountedStore(path) as store:
        commit = GroupCommit(store)
        lock = _WriteLock(path)
        after_append: list[str] = []

        async def append(conversation_id: str, scope: anyio.CancelScope) -> None:
            with scope:
                await commit.append(conversation_id, [_message(conversation_id)])
                after_append.append(conversation_id)

        leader, follower, other = anyio.CancelScope(), anyio.CancelScope(), anyio.CancelScope()
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(append, "leader", leader)
            await _until_batches(store, 1)
            task_group.start_soon(append, "follower", follower)
            task_group.start_soon(append, "other", other)
            await anyio.wait_all_tasks_blocked()
            leader.cancel()
            follower.cancel()
            await anyio.wait_all_tasks_blocked()
            assert store.batches == [["leader"]]  # cancelled, both still wait for their write
            lock.release()
        assert store.batches == [["leader"], ["follower", "other"]]
        assert after_append == ["other"]
        assert leader.cancelled_caught and follower.cancelled_caught
        for name in ("leader", "follower", "other"):
            assert store.load(name) == [_message(name)]
