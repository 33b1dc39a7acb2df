"""Conversation leases: one turn of a conversation at a time, in arrival order, everywhere."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from runtime import Clock, MonotonicClock

from . import _lease_scripts as lua
from ._errors import ClusterUnavailable, LeaseLost
from ._link import RedisLink

__all__ = ["ConversationLeases", "Lease", "LeaseTimeout"]

#: A waiter that has not polled for this long loses its place (it died): polls come every
#: ``poll`` seconds, so this is many polls.
_WAITER_TTL_MS = 5_000
#: The counters and queue of a conversation outlive its last use by a day (then tokens restart,
#: in a new epoch).
_KEEP_MS = 86_400_000
#: A holder stops this share of ``lease_ttl`` before the lease can expire in Redis: room for its
#: timer to fire late and for the turn to reach a checkpoint (its cancellation is cooperative).
_MARGIN = 0.1


class LeaseTimeout(TimeoutError):
    """The lease was not granted within the caller's timeout (others hold or precede it)."""

    def __init__(self, conversation_id: str, timeout: float) -> None:
        super().__init__(f"no lease on conversation {conversation_id!r} within {timeout:g} s")
        self.conversation_id = conversation_id


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease. ``token`` is the fencing token: it grows with every grant within one
    ``epoch``, so a write stamped with an older token than the store has seen comes from a holder
    that lost it. The tokens restart under a new ``epoch`` when Redis loses the conversation's
    counter (restarted empty, or a day unused): compare tokens only within one epoch."""

    conversation_id: str
    owner: str
    token: int
    epoch: str


class ConversationLeases:
    """Grants leases on conversations to ``owner`` (this worker), in FIFO order per conversation.

    A lease lasts ``lease_ttl`` unless renewed; a holder that died loses it after that. Waiting is
    a bounded poll (every ``poll`` seconds, up to the caller's timeout). Raises
    :class:`ClusterUnavailable` when Redis does not answer: leases fail closed (no turn runs
    without one).
    """

    def __init__(self, link: RedisLink, owner: str, *, poll: float = 0.02,
                 clock: Clock | None = None) -> None:
        self._link = link
        self.owner = owner
        self.ttl = link.config.lease_ttl
        self._poll = poll
        self._clock = clock or MonotonicClock()
        self._acquire = link.script(lua.ACQUIRE)
        self._renew = link.script(lua.RENEW)
        self._release = link.script(lua.RELEASE)
        self._abandon = link.script(lua.ABANDON)

    def _keys(self, conversation_id: str) -> list[str]:
        base = f"lease:{conversation_id}"
        return [self._link.key(base, name)
                for name in ("holder", "fence", "tickets", "queue", "alive", "epoch")]

    async def acquire(self, conversation_id: str, *, timeout: float) -> Lease:
        """Wait (bounded) for the lease; turns asked earlier are granted first.

        Raises :class:`LeaseTimeout` after ``timeout`` seconds, :class:`ClusterUnavailable`.
        Cancellation (or a failure) gives up the place in the queue, and the lease if the last
        request granted it unseen.
        """
        lease, _ = await self._wait_for_lease(conversation_id, timeout=timeout)
        return lease

    async def _wait_for_lease(self, conversation_id: str, *, timeout: float) -> tuple[Lease, float]:
        """:meth:`acquire`, and when (this clock) the granting request was sent: Redis cannot
        have granted it earlier, so the lease lasts at least ``lease_ttl`` from then."""
        keys = self._keys(conversation_id)
        ttl_ms = round(self.ttl * 1000)
        deadline = self._clock.now() + timeout
        # This wait's identity in Redis: every poll, and a request the link sends again after
        # a lost connection, asks as the same waiter (and is answered its grant, if it had one).
        ticket = secrets.token_hex(8)
        granted = False
        try:
            while True:
                asked = self._clock.now()
                granted, value, *epoch = await self._link.run(
                    self._acquire, "lease acquire", keys,
                    [self.owner, ticket, ttl_ms, _WAITER_TTL_MS, _KEEP_MS])
                if granted:
                    lease = Lease(conversation_id, self.owner, int(value), _text(epoch[0]))
                    return lease, asked
                if self._clock.now() + self._poll > deadline:
                    raise LeaseTimeout(conversation_id, timeout)
                await self._clock.sleep(self._poll)
        finally:
            if not granted:
                await self._give_up(keys, ticket)

    async def _give_up(self, keys: list[str], ticket: str) -> None:
        # Sent after the last ACQUIRE on the same pipelined connection, so Redis runs it after.
        with anyio.CancelScope(shield=True):
            # Unavailable: the place expires with its waiter TTL, a grant with the lease TTL.
            with contextlib.suppress(ClusterUnavailable):
                await self._link.run(self._abandon, "lease abandon", keys, [ticket])

    async def renew(self, lease: Lease) -> None:
        """Extend the lease by ``lease_ttl`` from now. Raises :class:`LeaseLost` if it is gone."""
        answer = await self._link.run(
            self._renew, "lease renew", self._keys(lease.conversation_id),
            [lease.token, lease.epoch, round(self.ttl * 1000), _KEEP_MS])
        if not answer:
            raise LeaseLost(lease.conversation_id, lease.token)

    async def release(self, lease: Lease) -> bool:
        """Give the lease back; ``False`` if it was no longer ours. Idempotent."""
        answer = await self._link.run(self._release, "lease release",
                                      self._keys(lease.conversation_id),
                                      [lease.token, lease.epoch])
        return bool(answer)

    @asynccontextmanager
    async def hold(self, conversation_id: str, *, timeout: float) -> AsyncIterator[Lease]:
        """``async with leases.hold(cid, timeout=...) as lease:`` run one turn inside.

        Renews every third of ``lease_ttl`` while the body runs. If the lease is lost, or no
        renewal succeeded in time, the body is cancelled and :class:`LeaseLost` raised: a timer
        ends the body a margin (a tenth of ``lease_ttl``) before the lease can expire in Redis,
        counted from when the last successful renewal (or the grant) was *sent*, so that it stops
        before the lease can be granted elsewhere (if it reaches a checkpoint within the margin).
        The lease is released on exit (shielded, bounded).
        """
        lease, asked = await self._wait_for_lease(conversation_id, timeout=timeout)
        margin = self.ttl * _MARGIN
        held_until = asked + self.ttl - margin
        lost = False
        try:
            async with anyio.create_task_group() as group:
                async def renew_forever() -> None:
                    nonlocal held_until, lost
                    while True:
                        await self._clock.sleep(self.ttl / 3)
                        asked = self._clock.now()
                        try:
                            await self.renew(lease)
                        except LeaseLost:
                            lost = True
                            group.cancel_scope.cancel()
                            return
                        except ClusterUnavailable:
                            continue  # try again: the timer ends the turn if none succeeds
                        held_until = asked + self.ttl - margin

                async def expire() -> None:
                    nonlocal lost
                    while (left := held_until - self._clock.now()) > 0:
                        await self._clock.sleep(left)
                    lost = True
                    group.cancel_scope.cancel()

                group.start_soon(renew_forever)
                group.start_soon(expire)
                yield lease
                group.cancel_scope.cancel()
        except BaseExceptionGroup as grouped:
            # The body's own error (the renewal tasks never raise), unwrapped: callers match
            # its type (a cost limit must reach the client as a cost limit).
            if len(grouped.exceptions) == 1:
                raise grouped.exceptions[0] from None
            raise
        finally:
            with anyio.CancelScope(shield=True):
                # Unavailable: the lease expires after lease_ttl.
                with contextlib.suppress(ClusterUnavailable):
                    await self.release(lease)
        if lost:
            raise LeaseLost(conversation_id, lease.token)

    def __repr__(self) -> str:
        return f"<ConversationLeases owner={self.owner!r} ttl={self.ttl:g}s>"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
