"""GroupCommit: the appends that arrive while a write is under way are committed together, each
still all or none, every caller answered once, with its own result."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import GroupCommit, HistoryStore
from actors.chat._history import TurnStart

pytestmark = pytest.mark.anyio


class _CountedStore(HistoryStore):
    """The real store; records the size of each batch it is given, and fails the batches
    numbered in ``failing`` as a disk would (the whole transaction)."""

    def __init__(self, path: Path, failing: Sequence[int] = ()) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []
        self._failing = set(failing)

    def append_batch(self, appends: Sequence[tuple[str, Sequence[dict[str, Any]]]],
                     starts: Sequence[TurnStart | None] | None = None,
                     ) -> list[Exception | None]:
        self.batches.append([conversation_id for conversation_id, _ in appends])
        if len(self.batches) in self._failing:
            raise sqlite3.OperationalError("disk I/O error")
        return super().append_batch(appends, starts)


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


async def _behind_a_write(
    store: _CountedStore,
    first: Callable[[], Coroutine[Any, Any, None]],
    *then: Callable[[], Coroutine[Any, Any, None]],
    while_queued: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ``first``, whose write waits for another connection's lock; meanwhile start ``then``
    (their appends queue behind it) and run ``while_queued``; then free the lock and wait for
    them all."""
    lock = _WriteLock(Path(store.path))
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(first)
        with anyio.fail_after(10):
            while not store.batches:  # its thread waits for the lock
                await anyio.sleep(0.005)
        for call in then:
            task_group.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        if while_queued is not None:
            await while_queued()
        lock.release()


async def test_appends_waiting_for_a_write_are_committed_together_in_arrival_order(
    tmp_path: Path,
) -> None:
    with _CountedStore(tmp_path / "history.db") as store:
        commit = GroupCommit(store)
        done: list[str] = []

        async def append(conversation_id: str, text: str) -> None:
            await commit.append(conversation_id, [_message(text)])
            done.append(text)

        async def nothing_done_yet() -> None:
            assert done == []

        await _behind_a_write(
            store, functools.partial(append, "c1", "first"),
            *(functools.partial(append, f"c{index % 2}", f"then {index}") for index in range(5)),
            while_queued=nothing_done_yet)
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
    with _CountedStore(tmp_path / "history.db") as store:
        commit = GroupCommit(store)
        outcomes: dict[str, str] = {}

        async def append(conversation_id: str, message: dict[str, Any]) -> None:
            try:
                await commit.append(conversation_id, [_message("kept?"), message])
            except TypeError as exc:
                outcomes[conversation_id] = f"TypeError: {exc}"
            else:
                outcomes[conversation_id] = "written"

        await _behind_a_write(
            store, functools.partial(append, "lead", _message("x")),
            functools.partial(append, "good", _message("y")),
            functools.partial(append, "bad", {"role": "user", "content": object()}),
            functools.partial(append, "also good", _message("z")))
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
    with _CountedStore(tmp_path / "history.db", failing=[2]) as store:
        commit = GroupCommit(store)
        outcomes: dict[str, str] = {}

        async def append(conversation_id: str) -> None:
            try:
                await commit.append(conversation_id, [_message(conversation_id)])
            except sqlite3.OperationalError as exc:
                outcomes[conversation_id] = str(exc)
            else:
                outcomes[conversation_id] = "written"

        await _behind_a_write(store, functools.partial(append, "lead"),
                              functools.partial(append, "b"), functools.partial(append, "c"))
        assert outcomes == {"lead": "written", "b": "disk I/O error", "c": "disk I/O error"}
        assert (store.load("b"), store.load("c")) == ([], [])
        await commit.append("d", [_message("d")])  # not stuck: the next append is written
        assert store.batches == [["lead"], ["b", "c"], ["d"]]
        assert store.load("d") == [_message("d")]


async def test_a_cancelled_caller_sees_its_append_written_before_the_cancellation(
    tmp_path: Path,
) -> None:
    with _CountedStore(tmp_path / "history.db") as store:
        commit = GroupCommit(store)
        after_append: list[str] = []

        async def append(conversation_id: str, scope: anyio.CancelScope) -> None:
            with scope:
                await commit.append(conversation_id, [_message(conversation_id)])
                after_append.append(conversation_id)

        leader, follower, other = anyio.CancelScope(), anyio.CancelScope(), anyio.CancelScope()

        async def cancel_two() -> None:
            leader.cancel()
            follower.cancel()
            await anyio.wait_all_tasks_blocked()
            assert store.batches == [["leader"]]  # cancelled, both still wait for their write

        await _behind_a_write(
            store, functools.partial(append, "leader", leader),
            functools.partial(append, "follower", follower),
            functools.partial(append, "other", other), while_queued=cancel_two)
        assert store.batches == [["leader"], ["follower", "other"]]
        assert after_append == ["other"]
        assert leader.cancelled_caught and follower.cancelled_caught
        for name in ("leader", "follower", "other"):
            assert store.load(name) == [_message(name)]


async def test_a_batch_holds_at_most_max_batch_appends_and_the_rest_follow_in_order(
    tmp_path: Path,
) -> None:
    with _CountedStore(tmp_path / "history.db") as store:
        commit = GroupCommit(store, max_batch=2)

        async def append(text: str) -> None:
            await commit.append("c", [_message(text)])

        await _behind_a_write(store, functools.partial(append, "0"),
                              *(functools.partial(append, str(n)) for n in range(1, 6)))
        assert store.batches == [["c"], ["c", "c"], ["c", "c"], ["c"]]
        assert [m["content"] for m in store.load("c")] == ["0", "1", "2", "3", "4", "5"]
    with pytest.raises(ValueError, match=r"^max_batch must be at least 1, not 0$"):
        GroupCommit(store, max_batch=0)
