"""GroupCommit: an append that finds the store free is written on the event loop at once; the
appends that arrive while a write is under way are committed together, each still all or none,
every caller answered once, with its own result; the write-ahead log stays bounded."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.chat import GroupCommit, HistoryStore
from actors.chat._history import CHECKPOINT_PAGES, TurnStart, WriteLockBusy

pytestmark = pytest.mark.anyio


class _CountedStore(HistoryStore):
    """The real store; records the conversations of each batch it writes on the event loop
    (``inline``) and of each it is given to write in a thread (``batches``, where writes wait),
    and fails the latter numbered in ``failing`` as a disk would (the whole transaction)."""

    def __init__(self, path: Path, failing: Sequence[int] = ()) -> None:
        super().__init__(path)
        self.inline: list[list[str]] = []
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()
        self._failing = set(failing)

    def append_batch(self, appends: Sequence[tuple[str, Sequence[dict[str, Any]]]],
                     starts: Sequence[TurnStart | None] | None = None, *, wait: bool = True,
                     ) -> list[Exception | None]:
        conversations = [conversation_id for conversation_id, _ in appends]
        self.threads.add(threading.get_ident())
        if not wait:
            written = super().append_batch(appends, starts, wait=False)
            self.inline.append(conversations)
            return written
        self.batches.append(conversations)
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


async def test_an_append_alone_is_written_at_once_on_the_event_loop(tmp_path: Path) -> None:
    with _CountedStore(tmp_path / "history.db") as store:
        commit = GroupCommit(store)
        await commit.append("c", [_message("a"), _message("b")])
        await commit.append("c", [_message("c")])
        assert (store.inline, store.batches) == ([["c"], ["c"]], [])
        assert store.threads == {threading.get_ident()}
        assert [m["content"] for m in store.load("c")] == ["a", "b", "c"]


async def test_a_write_on_the_event_loop_never_waits_for_a_lock(tmp_path: Path) -> None:
    """Another connection's write lock, or a thread of this store holding the store's lock
    (waiting for that one), makes a loop write give up at once, having written nothing; the
    thread's own write still waits its busy timeout, as before."""
    with HistoryStore(tmp_path / "history.db") as store:
        lock = _WriteLock(tmp_path / "history.db")
        started = time.monotonic()
        with pytest.raises(WriteLockBusy, match=r"another connection holds"):
            store.append_batch([("c", [_message("inline")])], wait=False)
        waiting = threading.Thread(target=store.append, args=("c", [_message("threaded")]))
        waiting.start()
        try:
            with anyio.fail_after(10):
                while not store._lock.locked():  # the thread waits for the database's lock
                    await anyio.sleep(0.005)
            with pytest.raises(WriteLockBusy, match=r"is being written"):
                store.append_batch([("c", [_message("inline")])], wait=False)
            assert time.monotonic() - started < 1.0  # neither waited the 10 s busy timeout
        finally:
            lock.release()
            waiting.join(10)
        assert store.load("c") == [_message("threaded")]


async def test_the_write_ahead_log_is_checkpointed_in_a_thread_and_stays_bounded(
    tmp_path: Path,
) -> None:
    """SQLite's own checkpoint would run on the event loop (fsync); the store's runs in the
    write that may wait: every ``CHECKPOINT_PAGES`` estimated pages one append goes to a thread,
    and the log is reused from its start instead of growing by every append."""
    text = "x" * 8192  # 6 estimated pages an append: 4 + 8,2xx bytes // 4,096
    appends = 1200
    with _CountedStore(tmp_path / "history.db") as store:
        commit = GroupCommit(store)
        for index in range(appends):
            await commit.append(f"c{index % 10}", [_message(text)])
        cycle = -(-CHECKPOINT_PAGES // 6) + 1  # inline appends to reach the mark, and the one after
        assert len(store.batches) == appends // cycle == 7
        assert len(store.inline) == appends - 7
        wal = (tmp_path / "history.db-wal").stat().st_size
        assert wal < 5 * 2**20, wal  # without checkpoints: > 1,200 x 8 KiB = 9.4 MiB
        assert len(store.load("c3")) == appends // 10


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
        assert (store.batches, store.inline) == ([["lead"], ["b", "c"]], [["d"]])
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
