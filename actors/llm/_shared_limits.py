"""A provider's rate limits shared by every worker and instance (``cluster.redis_url`` set).

:class:`SharedProviderLimiter` is a :class:`ProviderRateLimiter` whose admission is Redis's
(:class:`actors.cluster.SharedRateWindow`): one atomic script decides, on Redis's clock, whether
one more request and its tokens fit the strict sliding 60 s windows of *all* senders. The local
windows are not used: counting there too would only make a worker refuse what the shared window
allows. What the server tells us is shared: a 429's ``Retry-After`` and an
``x-ratelimit-remaining-* == 0`` pause (read by the provider's response hook) are pushed to Redis
when the request's admission block ends, so every worker pauses.

Why the stamp is sent when the block ends rather than at ``permit.sent()``: ``sent()`` is
synchronous in the provider, and a stamp later than the arrival only keeps the request in the
window longer (never an overshoot). A stream's block ends right after its response headers. The
stamp's round trip runs in the background (:meth:`SharedRateWindow.sent_soon`): it is not on the
answer's path (a stream's first delta used to wait for it); until it lands the permit counts in
flight, which never expires (never an overshoot either).

Leased permits (``cluster.permit_lease`` > 0): a request that asks Redis also leases up to 7
more permits (each counted in flight in Redis, like its own, until stamped or refunded), at most a
quarter of the requests and tokens left in the window; they wait in this worker's pool, and the
next requests take one with no call (a permit whose tokens cover the request's estimate; its stamp
shrinks it to the estimate). The pool refills in the background when one permit is left, only
while a refill takes at most a quarter of what is left (near the limit every request asks Redis,
one permit each, as without a pool). A pooled permit is used within ``permit_lease`` of its grant
or refunded; a pause seen here (a 429's ``Retry-After``, ``x-ratelimit-remaining: 0``, a refused
admission) refunds the pool at once, so a pause set by another worker stops this worker's
requests at most ``permit_lease`` late. Exact: Redis counts every leased permit before it is used,
and a permit's stamp is taken after its request has left (never earlier than the real send).

Faults (policy in :mod:`actors.cluster`): Redis unavailable at admission refuses the request
with a retryable :class:`ProviderUnavailable` (fail closed; pooled permits, counted in Redis, may
still be used within their lease); a failed stamp, pause or refund is dropped (the permit counts as
sent at ``in_flight_ttl`` at the latest).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from actors.cluster import ClusterUnavailable, RedisLink, SharedRateWindow
from runtime import Clock

from ._errors import LLMRateLimitError, ProviderUnavailable
from ._limits import ProviderRateLimiter, RateLimitConfig, RatePermit, check_within_budget

__all__ = ["SharedProviderLimiter", "shared_limiter_factory"]

logger = logging.getLogger(__name__)

#: Seconds a stamp or pause may take once the request has left (shielded from cancellation).
_AFTER_TIMEOUT = 2.0
#: The longest a request waits for a shared slot before a retryable 429 (the router falls back).
_MAX_WAIT = 30.0
#: Permits leased beyond the one a request asks for (the pool's size, at most).
_LEASE = 7
#: Of what is left in the window, a lease takes at most 1 / _SHARE.
_SHARE = 4
#: The pool refills in the background when this many permits are left.
_LOW_WATER = 1


class SharedProviderLimiter(ProviderRateLimiter):
    """Admits requests through the shared window; pauses are shared (see the module doc).

    ``admission_timeout``: the longest wait for a slot; a later slot is refused at once with a
    retryable :class:`LLMRateLimitError` naming it.
    """

    def __init__(self, config: RateLimitConfig, *, clock: Clock, name: str,
                 window: SharedRateWindow, admission_timeout: float = _MAX_WAIT) -> None:
        super().__init__(config, clock=clock, name=name)
        self.shared = window
        self._admission_timeout = admission_timeout
        # The pool: (permit, its tokens, when granted on the loop's clock, a real one: the lease
        # bounds a pause set elsewhere, on Redis's real clock).
        self._lease = window.lease
        self._pool: deque[tuple[int, int, float]] = deque()
        self._refilling = False
        self._expiry: asyncio.TimerHandle | None = None
        self._recent: deque[int] = deque(maxlen=8)  # the last estimates: a pooled permit's size
        #: Round trips of admission: on demand (a request waits) and refills (nobody waits).
        self.asked = 0
        self.refills = 0
        self._closed = False
        if self._lease > 0:
            window.link.on_close(self._close)

    @asynccontextmanager
    async def admit(self, tokens: int = 0) -> AsyncIterator[RatePermit]:
        check_within_budget(self.config, tokens, self.name)
        self._recent.append(tokens)
        leased = self._take_leased(tokens)
        if leased is None:
            granted = await self._ask(tokens)
        else:
            granted = leased
            if len(self._pool) <= _LOW_WATER and not self._refilling:
                self._refill_soon()
        permit = RatePermit(self, tokens)
        paused: float | None = None
        try:
            yield permit
        except LLMRateLimitError as exc:
            if exc.status_code == 429 and exc.retry_after:
                paused = exc.retry_after
            raise
        finally:
            await self._after(granted, tokens, paused)

    async def _ask(self, tokens: int) -> int:
        """Admission by Redis (waiting for a slot), leasing more permits for the pool."""
        name = self.name or "provider"
        extra = _LEASE if self._lease > 0 else 0
        self.asked += 1
        # A lease runs from when it was asked for, not from when its answer was read: a reply
        # read late must not stretch it past a pause another worker set meanwhile.
        asked_at = asyncio.get_running_loop().time()
        try:
            admission = await self.shared.acquire(tokens, timeout=self._admission_timeout,
                                                  clock=self._clock, extra=extra,
                                                  extra_tokens=self._unit())
        except ClusterUnavailable as exc:
            raise ProviderUnavailable(
                f"{name}: the shared rate limits are unavailable ({exc.reason})",
                provider=self.name, retry_after=1.0) from None
        if not admission.admitted or admission.permit is None:
            self._drop_pool()  # a pause or a full window: the others get what we held
            wait = admission.retry_after
            shown = "unknown" if wait is None or wait == math.inf else f"{wait:.3g} s"
            raise LLMRateLimitError(
                f"{name} is at its shared rate limit: the next slot is in {shown}",
                provider=self.name, retry_after=wait if wait != math.inf else None)
        self._fill(admission.extra, self._unit(), asked_at)
        return admission.permit

    def _unit(self) -> int:
        """The tokens of a pooled permit: the largest of the last estimates."""
        return max(self._recent, default=0)

    # -- the pool of leased permits ----------------------------------------------------------

    def _take_leased(self, tokens: int) -> int | None:
        """A pooled permit covering ``tokens`` (no await), or ``None``."""
        if not self._pool:
            return None
        if self.pause_remaining() > 0:
            self._drop_pool()
            return None
        self._expire()
        for index, (permit, size, _) in enumerate(self._pool):
            if size >= tokens:
                del self._pool[index]
                return permit
        return None

    def _fill(self, permits: tuple[int, ...], size: int, asked_at: float) -> None:
        """Pool ``permits``, leased from ``asked_at`` (the loop's time when they were asked)."""
        if not permits:
            return
        if self._closed:  # a refill that landed while the link closes
            self.shared.refund_soon(list(permits))
            return
        self._pool.extend((permit, size, asked_at) for permit in permits)
        self._expire()  # an answer read a lease late leases nothing
        if self._expiry is None and self._pool:
            self._expiry = asyncio.get_running_loop().call_at(asked_at + self._lease,
                                                              self._on_expiry)

    def _expire(self) -> None:
        """Give back the permits older than the lease."""
        oldest = asyncio.get_running_loop().time() - self._lease
        # The whole pool (a few permits): a refill answered late may hold older leases.
        old = [permit for permit, _, asked_at in self._pool if asked_at <= oldest]
        if old:
            self._pool = deque(entry for entry in self._pool if entry[2] > oldest)
        self.shared.refund_soon(old)

    def _on_expiry(self) -> None:
        self._expiry = None
        self._expire()
        if self._pool:
            wait = (min(entry[2] for entry in self._pool) + self._lease
                    - asyncio.get_running_loop().time())
            self._expiry = asyncio.get_running_loop().call_later(max(wait, 0.0), self._on_expiry)

    def _drop_pool(self) -> None:
        """Give back every pooled permit (a pause was seen, or the link closes)."""
        if self._pool:
            self.shared.refund_soon([permit for permit, _, _ in self._pool])
            self._pool.clear()

    def _close(self) -> None:
        self._closed = True
        self._drop_pool()

    def _refill_soon(self) -> None:
        self._refilling = True
        task = asyncio.get_running_loop().create_task(self._refill())
        self.shared.link.keep(task)

    async def _refill(self) -> None:
        """Lease permits for the pool; nothing when a lease would take more than its share."""
        size = self._unit()
        self.refills += 1
        asked_at = asyncio.get_running_loop().time()
        try:
            admission = await self.shared.admit(size, extra=_LEASE - 1, extra_tokens=size,
                                                share=_SHARE, lease_only=True)
        except (ClusterUnavailable, anyio.ClosedResourceError):
            return
        except Exception:
            logger.exception("rate limits: a refill of %s failed", self.name)
            return
        finally:
            self._refilling = False
        if admission.admitted and admission.permit is not None:
            self._fill((admission.permit, *admission.extra), size, asked_at)

    async def _after(self, permit: int, tokens: int, paused: float | None) -> None:
        """Stamp the permit in the background (the answer or the stream's first delta does
        not wait for it) and share any pause the server asked for (shielded, bounded)."""
        self.shared.sent_soon(permit, tokens)
        pause = max(paused or 0.0, self.pause_remaining())
        if pause <= 0:
            return
        self._drop_pool()
        with anyio.CancelScope(shield=True), anyio.move_on_after(_AFTER_TIMEOUT), \
                contextlib.suppress(ClusterUnavailable):
            await self.shared.pause_for(pause)

    def _stamp(self, permit: RatePermit) -> None:
        """Nothing is counted locally (the shared window counts, in :meth:`_after`)."""

    def __repr__(self) -> str:
        return (f"<SharedProviderLimiter {self.name!r} rpm={self.config.requests_per_minute} "
                f"tpm={self.config.tokens_per_minute}>")


def shared_limiter_factory(link: RedisLink, name: str, config: RateLimitConfig, *,
                           admission_timeout: float = _MAX_WAIT
                           ) -> Callable[[Clock], ProviderRateLimiter]:
    """How to build provider ``name``'s limiter, sharing its windows through ``link``.

    A factory because the limiter needs the kernel's clock, known when the provider first starts
    (see :class:`~actors.llm._provider.ProviderState`).
    """

    def build(clock: Clock) -> ProviderRateLimiter:
        window = SharedRateWindow(link, name, requests_per_minute=config.requests_per_minute,
                                  tokens_per_minute=config.tokens_per_minute)
        return SharedProviderLimiter(config, clock=clock, name=name, window=window,
                                     admission_timeout=admission_timeout)

    return build
