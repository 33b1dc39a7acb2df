"""Each provider's requests- and tokens-per-minute windows, shared by every worker and instance."""

from __future__ import annotations

import math
from dataclasses import dataclass

from runtime import Clock, MonotonicClock

from . import _rate_scripts as lua
from ._link import RedisLink

__all__ = ["Admission", "SharedRateWindow", "WindowUsage"]

_US = 1_000_000
#: How long the born marker outlives the provider's last admission (a day unused looks lost).
_BORN_TTL_MS = 86_400_000
#: Poll interval while the next slot depends on an in-flight request elsewhere.
_POLL = 0.05


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of one admission attempt.

    ``admitted``: the request may leave; call :meth:`SharedRateWindow.sent` with ``permit`` when
    it reached the provider, or :meth:`SharedRateWindow.refund` if it never left. Otherwise
    ``retry_after`` is the seconds until the next slot on Redis's clock (``server_time`` +
    ``retry_after`` is "next slot at T"); ``None`` when the slot depends on an in-flight request
    being sent (or a lease would take more than its share), ``math.inf`` when the request could
    never fit. ``extra``: the permits leased beyond ``permit`` (each like it: sent or refunded).
    """

    admitted: bool
    permit: int | None
    retry_after: float | None
    server_time: float
    extra: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """What the shared window holds now."""

    requests: int
    tokens: int
    in_flight: int
    paused_for: float


class SharedRateWindow:
    """The strict sliding 60 s windows of one provider, atomically shared through Redis.

    Same semantics as :class:`actors.limits.SlidingWindowLimit`: an admitted request counts in
    flight (it never expires) until :meth:`sent`; from then on it counts for ``window`` seconds.
    A request is admitted only if one more request and its tokens fit both windows
    (all-or-nothing). One difference, because an instance may die holding permits: an in-flight
    permit counts as sent at ``in_flight_ttl`` after its admission at the latest (so the TTL must
    exceed any request's time before it is sent). Pauses (``Retry-After``, ``x-ratelimit-reset``)
    are shared: every instance honours them. ``None`` limits are unlimited.
    """

    def __init__(
        self,
        link: RedisLink,
        provider: str,
        *,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        window: float = 60.0,
    ) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self._link = link
        self.provider = provider
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.window = window
        base = f"rate:{provider}"
        self._keys = [link.key(base, name) for name in ("state", "stamped", "inflight", "amounts")]
        self._born = link.key(base, "born")
        config = link.config
        self._window_us = round(window * _US)
        self._in_flight_us = round(config.in_flight_ttl * _US)
        self._key_ttl_ms = round((window + config.in_flight_ttl) * 1000) + 60_000
        self._quarantine = "1" if config.rate_quarantine_on_loss else "0"
        self._lease = config.permit_lease
        #: The ``born`` marker of the windows as this process saw them last ("" before its first
        #: admission): another value later means Redis lost them in between.
        self._born_seen = ""
        self._admit = link.script(lua.ADMIT)
        self._sent = link.script(lua.SENT)
        self._refund = link.script(lua.REFUND)
        self._pause = link.script(lua.PAUSE)
        self._usage = link.script(lua.USAGE)

    @property
    def link(self) -> RedisLink:
        """The Redis link the windows live on."""
        return self._link

    @property
    def lease(self) -> float:
        """Seconds a worker may use permits leased ahead (``cluster.permit_lease``)."""
        return self._lease

    async def admit(self, tokens: int = 0, *, extra: int = 0, extra_tokens: int = 0,
                    share: int = 4, lease_only: bool = False) -> Admission:
        """Try once to admit one request of ``tokens`` estimated tokens; never waits.

        ``extra``: also lease up to that many permits of ``extra_tokens`` each (for a worker's
        pool), as many as leave the others ``share - 1`` times as much (at most ``1 / share``
        of the requests and tokens left). ``lease_only``: the first permit too (a pool's refill).
        Raises :class:`ClusterUnavailable` when Redis does not answer (nothing was admitted).
        """
        if min(tokens, extra, extra_tokens) < 0 or share < 1:
            raise ValueError("tokens and permits must not be negative")
        tpm = self.tokens_per_minute
        if tpm is not None and tokens > tpm:
            return Admission(False, None, math.inf, 0.0)
        answer = await self._link.run(
            self._admit, "rate admission", [*self._keys, self._born],
            [tokens, self.requests_per_minute or 0, tpm or 0, self._window_us,
             self._in_flight_us, self._key_ttl_ms, self._quarantine, _BORN_TTL_MS,
             self._born_seen, extra, extra_tokens, share,
             "1" if lease_only else "0"],
        )
        ok, value, now = (int(x) for x in answer[:3])
        born = answer[3]
        self._born_seen = born.decode() if isinstance(born, bytes) else str(born)
        if ok:
            extras = tuple(range(value + 1, value + 1 + int(answer[4])))
            return Admission(True, value, 0.0, now / _US, extras)
        return Admission(False, None, None if value < 0 else value / _US, now / _US)

    async def acquire(self, tokens: int, *, timeout: float, clock: Clock | None = None,
                      extra: int = 0, extra_tokens: int = 0) -> Admission:
        """Admit, waiting for the next slot while it comes within ``timeout`` seconds.

        Returns the admission, or the last refusal when the next slot is after the timeout
        (the caller answers a retryable 429 at once, as today). Bounded: it sleeps only until
        a slot Redis named, or ``50 ms`` at a time while the slot depends on in-flight requests.
        """
        clock = clock or MonotonicClock()
        deadline = clock.now() + timeout
        while True:
            admission = await self.admit(tokens, extra=extra, extra_tokens=extra_tokens)
            if admission.admitted or admission.retry_after == math.inf:
                return admission
            wait = _POLL if admission.retry_after is None else admission.retry_after
            if clock.now() + wait > deadline:
                return admission
            await clock.sleep(wait)

    async def sent(self, permit: int, tokens: int | None = None) -> bool:
        """The request reached the provider now: it expires ``window`` from now. Idempotent.

        ``tokens``: what the request estimated, when its (leased) permit holds more.
        """
        answer = await self._link.run(self._sent, "rate stamp", self._keys,
                                      self._sent_args(permit, tokens))
        return bool(answer)

    def _sent_args(self, permit: int, tokens: int | None) -> list[int]:
        args = [permit, self._window_us, self._key_ttl_ms]
        return args if tokens is None else [*args, tokens]

    def sent_soon(self, permit: int, tokens: int | None = None) -> None:
        """:meth:`sent` in the background: the caller does not wait for the round trip.

        Until it lands the permit counts in flight (never an overshoot); a stamp that fails is
        dropped (the permit counts as sent at ``in_flight_ttl`` at the latest).
        """
        self._link.run_soon(self._sent, "rate stamp", self._keys, self._sent_args(permit, tokens))

    async def refund(self, permit: int) -> bool:
        """The request never left: forget it (only while it is in flight)."""
        answer = await self._link.run(self._refund, "rate refund", self._keys,
                                      [permit, self._window_us])
        return bool(answer)

    def refund_soon(self, permits: list[int]) -> None:
        """:meth:`refund` of unused leased permits, in the background (one call for all; one
        that fails leaves them in flight until their deadline: never an overshoot)."""
        if permits:
            self._link.run_soon(self._refund, "rate refund", self._keys,
                                [permits[0], self._window_us, *permits[1:]])

    async def pause_for(self, seconds: float) -> float:
        """No instance sends for ``seconds`` from now (longer pauses are kept); the pause left."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("seconds must be finite and not negative")
        answer = await self._link.run(self._pause, "rate pause", self._keys,
                                      [round(seconds * _US), self._key_ttl_ms])
        return int(answer) / _US

    async def usage(self) -> WindowUsage:
        """Requests and tokens in the window now (in flight included) and the pause left."""
        requests, tokens, pause, in_flight = await self._link.run(
            self._usage, "rate usage", self._keys, [self._window_us])
        return WindowUsage(int(requests), int(tokens), int(in_flight), int(pause) / _US)

    def __repr__(self) -> str:
        return (f"<SharedRateWindow {self.provider!r} rpm={self.requests_per_minute} "
                f"tpm={self.tokens_per_minute}>")
