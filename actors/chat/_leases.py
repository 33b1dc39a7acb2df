"""Conversation leases for the turns of a session: one turn of a conversation at a time anywhere.

With several workers (``cluster.redis_url``), two sockets of one conversation may reach two
workers, each with its own SessionActor. :class:`SharedTurnLeases` makes the turns of a
conversation run one at a time, in arrival order, across every worker and instance
(:class:`actors.cluster.ConversationLeases`), and says when the history must be read again: a
lease whose fencing token is not the successor of the one this worker last held means another
worker (or a Redis that lost its data) came in between, so the history in memory may be stale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from actors.cluster import ConversationLeases

__all__ = ["SharedTurnLeases", "TurnLeases"]

#: Conversations whose last token this worker remembers (older ones just re-read their history).
_REMEMBERED = 10_000


class TurnLeases(Protocol):
    """What a session needs around a turn: exclusive use of its conversation."""

    def hold(self, conversation_id: str) -> AbstractAsyncContextManager[bool]:
        """Hold the conversation for one turn; yields whether the history must be re-read.

        Raises :class:`actors.cluster.ClusterUnavailable`, :class:`actors.cluster.LeaseTimeout`,
        and :class:`actors.cluster.LeaseLost` when the lease is lost during the turn.
        """
        ...


class SharedTurnLeases:
    """:class:`TurnLeases` through Redis; ``timeout``: the longest wait for a lease."""

    def __init__(self, leases: ConversationLeases, *, timeout: float) -> None:
        self._leases = leases
        self._timeout = timeout
        self._last: OrderedDict[str, int] = OrderedDict()

    @asynccontextmanager
    async def hold(self, conversation_id: str) -> AsyncIterator[bool]:
        async with self._leases.hold(conversation_id, timeout=self._timeout) as lease:
            stale = self._last.pop(conversation_id, None) != lease.token - 1
            self._last[conversation_id] = lease.token
            while len(self._last) > _REMEMBERED:
                self._last.popitem(last=False)
            yield stale

    def __repr__(self) -> str:
        return f"<SharedTurnLeases {self._leases!r}>"
