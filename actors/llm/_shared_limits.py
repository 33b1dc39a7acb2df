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

Faults (policy in :mod:`actors.cluster`): Redis unavailable at admission refuses the request
with a retryable :class:`ProviderUnavailable` (fail closed); a failed stamp or pause is dropped
(the permit counts as sent at ``in_flight_ttl`` at the latest).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from actors.cluster import ClusterUnavailable, RedisLink, SharedRateWindow
from runtime import Clock

from ._errors import LLMRateLimitError, LLMTokenLimitError, ProviderUnavailable
from ._limits import ProviderRateLimiter, RateLimitConfig, RatePermit

__all__ = ["SharedProviderLimiter", "shared_limiter_factory"]

#: Seconds a stamp or pause may take once the request has left (shielded from cancellation).
_AFTER_TIMEOUT = 2.0
#: The longest a request waits for a shared slot before a retryable 429 (the router falls back).
_MAX_WAIT = 30.0


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

    @asynccontextmanager
    async def admit(self, tokens: int = 0) -> AsyncIterator[RatePermit]:
        tpm = self.config.tokens_per_minute
        if tpm is not None and tokens > tpm:
            raise LLMTokenLimitError(
                f"estimated {tokens} tokens exceed the whole budget of {tpm} tokens per minute"
                f" of {self.name}", provider=self.name)
        name = self.name or "provider"
        try:
            admission = await self.shared.acquire(tokens, timeout=self._admission_timeout,
                                                  clock=self._clock)
        except ClusterUnavailable as exc:
            raise ProviderUnavailable(
                f"{name}: the shared rate limits are unavailable ({exc.reason})",
                provider=self.name, retry_after=1.0) from None
        if not admission.admitted or admission.permit is None:
            wait = admission.retry_after
            shown = "unknown" if wait is None or wait == math.inf else f"{wait:.3g} s"
            raise LLMRateLimitError(
                f"{name} is at its shared rate limit: the next slot is in {shown}",
                provider=self.name, retry_after=wait if wait != math.inf else None)
        permit = RatePermit(self, tokens)
        paused: float | None = None
        try:
            yield permit
        except LLMRateLimitError as exc:
            if exc.status_code == 429 and exc.retry_after:
                paused = exc.retry_after
            raise
        finally:
            await self._after(admission.permit, paused)

    async def _after(self, permit: int, paused: float | None) -> None:
        """Stamp the permit in the background (the answer or the stream's first delta does
        not wait for it) and share any pause the server asked for (shielded, bounded)."""
        self.shared.sent_soon(permit)
        pause = max(paused or 0.0, self.pause_remaining())
        if pause <= 0:
            return
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
