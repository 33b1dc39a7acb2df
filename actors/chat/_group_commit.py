"""Group commit: the history appends of every conversation of a process, written together.

Each append used to be its own trip to a worker thread, its own turn at the store's lock and its
own commit. In a burst (many new conversations answering at once) those trips queued for the lock
and for the GIL: one append waited p90 284 ms, measured in the server. Here the appends that
arrive while a write is under way wait for it to end, then go to the store together: one thread
trip, one transaction (:meth:`HistoryStore.append_batch`: each append still all or none), one
commit. A write starts at once when none is under way, so an append alone waits no longer than
before.

And an append that finds no write under way is written on the event loop itself, when the store
can take it without waiting (:class:`~runtime.sqlite.WriteLockBusy` otherwise: then in a thread,
as above). A short WAL-mode commit with ``synchronous=NORMAL`` is a few statements and one
``write()``, ~0.1 ms of CPU; in a thread the same write waited for the GIL at every statement
behind a busy loop: at 200 paced streams one append took p50 ~270 ms there (queued, written and
back), on the path of every turn's first text and of its ``complete``.

Nothing runs in the background: the first caller to find no write under way writes, and the one
whose append heads the queue when a write ends writes the next batch. Waits are shielded, like the
thread call they replace: an append that was queued is written, or fails, before its caller sees a
cancellation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._history import HistoryStore, TurnStart, WriteLockBusy

__all__ = ["GroupCommit"]

Message = dict[str, Any]


class _Append:
    __slots__ = ("conversation_id", "done", "error", "messages", "start", "woken")

    def __init__(self, conversation_id: str, messages: Sequence[Message],
                 start: TurnStart | None) -> None:
        self.conversation_id = conversation_id
        self.messages = messages
        self.start = start
        self.woken = anyio.Event()
        """Set when the append is done, or when it heads the queue and must write the batch."""
        self.done = False
        self.error: Exception | None = None


class GroupCommit:
    """Appends to ``store`` from any number of tasks of one event loop, written in batches of at
    most ``max_batch`` (a transaction holds the database's write lock: other workers' writes wait
    for it, so it stays short).

    One per store and process: the server gives every conversation's actor the same one.
    """

    def __init__(self, store: HistoryStore, *, max_batch: int = 128) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._store = store
        self._max_batch = max_batch
        self._queue: list[_Append] = []
        self._writing = False

    async def append(self, conversation_id: str, messages: Sequence[Message],
                     start: TurnStart | None = None) -> None:
        """:meth:`HistoryStore.append`, batched with the appends waiting at the same time; a
        turn's first append gives its ``start`` (:class:`~actors.chat._history.TurnStart`).

        Raises what it would raise (``sqlite3.Error``, :class:`HistoryStoreClosed`, ...).
        """
        if not self._writing:  # then nothing is queued either
            try:
                error = self._store.append_batch([(conversation_id, messages)], [start],
                                                 wait=False)[0]
            except WriteLockBusy:
                pass
            else:
                await anyio.lowlevel.checkpoint_if_cancelled()
                if error is not None:
                    raise error
                return
        item = _Append(conversation_id, messages, start)
        self._queue.append(item)
        with anyio.CancelScope(shield=True):
            if self._writing:
                await item.woken.wait()
            if not item.done:
                await self._write_queued()
        await anyio.lowlevel.checkpoint_if_cancelled()  # as a thread call: written, then cancelled
        if item.error is not None:
            raise item.error

    async def _write_queued(self) -> None:
        self._writing = True
        batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
        errors: Sequence[Exception | None] | None = None
        try:
            errors = await anyio.to_thread.run_sync(
                self._store.append_batch, [(a.conversation_id, a.messages) for a in batch],
                [a.start for a in batch],
            )
        except Exception as exc:  # the whole transaction: none of the batch was written
            errors = [exc] * len(batch)
        finally:
            for index, item in enumerate(batch):
                item.done = True
                item.error = (errors[index] if errors is not None
                              else RuntimeError("the history write was interrupted"))
                item.woken.set()
            if self._queue:
                self._queue[0].woken.set()  # it writes the next batch (still ``_writing``)
            else:
                self._writing = False

    def __repr__(self) -> str:
        state = "writing" if self._writing else "idle"
        return f"<GroupCommit {self._store.path!r} [{state}, {len(self._queue)} queued]>"
