"""Conversation leases for the turns of a session: one turn of a conversation at a time anywhere.

With several workers (``cluster.redis_url``), two sockets of one conversation may reach two
workers, each with its own SessionActor. :class:`SharedTurnLeases` makes the turns of a
conversation run one at a time, in arrival order, across every worker and instance
(:class:`actors.cluster.ConversationLeases`), and says when the history must be read again: a
lease whose fencing token is not the successor of the one this worker last held, in the same
lease epoch, means another worker came in between (or Redis lost the conversation's counter, and
so whether one did), so the history in memory may be stale.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import ClassVar, Protocol

from actors.cluster import ClusterUnavailable, ConversationLeases, LeaseLost, LeaseTimeout

from ._messages import HistoryWriteError, conversation_label

__all__ = ["ConversationUnavailable", "SharedTurnLeases", "TurnLeases"]

logger = logging.getLogger(__name__)

#: Conversations whose last token this worker remembers (older ones just re-read their history).
_REMEMBERED = 10_000

#: What the client reads (the cause is logged, never sent).
_CLIENT_TEXT: dict[type[Exception], str] = {
    ClusterUnavailable: "the conversation is unavailable now (shared state did not answer);"
                        " try again",
    LeaseTimeout: "the conversation is busy with other turns; try again",
    LeaseLost: "the conversation was taken over during this turn; its answer was not completed",
}


class ConversationUnavailable(HistoryWriteError):
    """The conversation cannot be held for this turn now: too many requests wait for it, the
    shared state (Redis) did not answer, its lease was not granted in time, or it was lost
    mid-turn. Nothing more of the turn is written; the client may try again (``error_type``
    ``unavailable`` on the wire, like the :class:`HistoryWriteError` it specialises: the
    conversation cannot be written now)."""

    error_type: ClassVar[str] = "unavailable"


class TurnLeases(Protocol):
    """What a session needs around a turn: exclusive use of its conversation."""

    def hold(self, conversation_id: str, *, new: bool = False) -> AbstractAsyncContextManager[bool]:
        """Hold the conversation for one turn; yields whether the history must be re-read.

        ``new``: the conversation was issued by this worker just now and not held since, so its
        history is known empty: it must be re-read only if another holder came first.

        Raises :class:`ConversationUnavailable` when it cannot be held (or is lost during the
        turn); the turn's own errors pass through unchanged.
        """
        ...


class SharedTurnLeases:
    """:class:`TurnLeases` through Redis; ``timeout``: the longest wait for a lease."""

    def __init__(self, leases: ConversationLeases, *, timeout: float) -> None:
        self._leases = leases
        self._timeout = timeout
        self._last: OrderedDict[str, tuple[str, int]] = OrderedDict()  # (epoch, token)

    @asynccontextmanager
    async def hold(self, conversation_id: str, *, new: bool = False) -> AsyncIterator[bool]:
        in_body = False
        try:
            async with self._leases.hold(conversation_id, timeout=self._timeout) as lease:
                last = self._last.pop(conversation_id, None)
                # A new conversation's first grant is token 1 (its fence starts at 0). Tokens
                # restart under a new epoch: one of another epoch follows nothing.
                previous = (lease.epoch, 0) if new else last
                stale = previous != (lease.epoch, lease.token - 1)
                self._last[conversation_id] = (lease.epoch, lease.token)
                while len(self._last) > _REMEMBERED:
                    self._last.popitem(last=False)
                in_body = True
                try:
                    yield stale
                except BaseException:
                    # The body may not have brought the history in memory up to date (a clear
                    # that failed ignores ``stale``): the next turn here reads it again.
                    self._last.pop(conversation_id, None)
                    raise
        except (ClusterUnavailable, LeaseTimeout, LeaseLost) as exc:
            if in_body and not isinstance(exc, LeaseLost):
                raise  # the turn's own error (the lease machinery raises LeaseLost only)
            logger.warning("conversation %s: %s", conversation_label(conversation_id), exc)
            raise ConversationUnavailable(_CLIENT_TEXT[type(exc)]) from exc

    def __repr__(self) -> str:
        return f"<SharedTurnLeases {self._leases!r}>"
