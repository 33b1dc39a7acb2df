"""Client-side rate limiting for one provider: requests and tokens per minute, plus server pauses.

Two mechanisms, each for what it is good at:

* **An exact sliding-window guard** (:class:`SlidingWindowLimit`, on the injected clock) is what
  makes invariant 3 hold: over *any* 60 s window the provider never receives more than the
  configured requests or tokens. A request is admitted only if the window's total plus its amount
  fits the limit. Its entry counts as "in flight" (it never expires) until the caller says the
  request has reached the provider (:meth:`RatePermit.sent`: the response headers arrived, or the
  call ended); from then on it expires 60 s later. Stamping *after* arrival, never before, is
  what makes the bound exact whatever the delay between admission and arrival (pool wait,
  connect, retransmits): a window the provider sees is always covered by ours.
* **Leaky buckets** pace what the window admits (a bucket holds one minute's budget
  and refills at ``limit / 60`` per second, the model OpenAI reports in its ``x-ratelimit-*``
  headers) and carry what the server tells us: ``x-ratelimit-remaining-*`` lower than what our
  bucket believes drains the bucket to match. On their own the buckets would let up to twice the
  limit through in a sliding window (a full bucket's burst plus a minute of refill); the guard
  removes that.

On top of both, the server can only make us slower: ``remaining == 0`` pauses all requests until
the matching ``x-ratelimit-reset-*``, and ``Retry-After`` (:meth:`ProviderRateLimiter.pause_for`)
pauses all requests. Everything runs on the injected clock, so tests step time instead of sleeping.
(The buckets are ours, a few lines: aiolimiter's leak on the event loop's clock, and its public API
can neither wait on another clock nor be told what the server reported.)

What a request costs in tokens is the caller's estimate; the provider actor acquires the prompt's
estimated tokens plus ``max_tokens`` (what OpenAI itself counts against a tokens-per-minute limit
when the request arrives).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
from pydantic import BaseModel, ConfigDict, Field

from runtime import Clock

from ._errors import LLMTokenLimitError

__all__ = [
    "MAX_SERVER_PAUSE",
    "WINDOW_SECONDS",
    "ProviderRateLimiter",
    "RateLimitConfig",
    "RatePermit",
    "SlidingWindowLimit",
    "check_within_budget",
    "parse_reset_duration",
]

WINDOW_SECONDS = 60.0


def check_within_budget(config: RateLimitConfig, tokens: int, name: str | None) -> None:
    """Raise :class:`LLMTokenLimitError` (``provider_specific``) when ``tokens`` exceeds the
    provider's whole tokens-per-minute budget: it could never be served here, though another
    provider's budget may take it (the router falls back)."""
    tpm = config.tokens_per_minute
    if tpm is not None and tokens > tpm:
        raise LLMTokenLimitError(
            f"estimated {tokens} tokens exceed the whole budget of {tpm} tokens per minute"
            + (f" of {name}" if name else ""),
            provider=name, provider_specific=True,
        )

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class RateLimitConfig(BaseModel):
    """Per-minute limits of one provider; ``None`` means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


MAX_SERVER_PAUSE = 300.0
"""Seconds: the longest pause a server's ``Retry-After`` / ``x-ratelimit-reset-*`` may impose."""


def parse_reset_duration(value: str) -> float | None:
    """Seconds in an OpenAI reset duration (``6m0s``, ``1s``, ``20ms``, ``1h2m3.5s``, ``0.5``).

    Returns ``None`` for anything else.
    """
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


class SlidingWindowLimit:
    """At most ``limit`` units over any ``window`` seconds of ``clock``, counted exactly.

    Amounts are :meth:`take`\\ n in flight (they count until :meth:`stamp`\\ ed), and a stamped
    amount counts for ``window`` seconds from its stamp. Not thread-safe: one event loop.
    """

    def __init__(self, limit: float, *, clock: Clock, window: float = WINDOW_SECONDS) -> None:
        if limit <= 0 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._stamped: deque[tuple[float, float]] = deque()  # (stamp time, amount), in order
        self._stamped_total = 0.0
        self._in_flight = 0.0

    def _expire(self, now: float) -> None:
        # ``at + window`` computed exactly as in wait_time(), so that a wait of 0 means expired.
        stamped = self._stamped
        while stamped and stamped[0][0] + self.window <= now:
            self._stamped_total -= stamped.popleft()[1]
        if not stamped:
            self._stamped_total = 0.0  # no float drift once empty

    def used(self) -> float:
        """Units in the window now: in flight plus stamped within the last ``window`` seconds."""
        self._expire(self._clock.now())
        return self._in_flight + self._stamped_total

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` fits if nothing else is taken (``inf``: only a stamp helps)."""
        now = self._clock.now()
        self._expire(now)
        excess = self._in_flight + self._stamped_total + amount - self.limit
        if excess <= 0:
            return 0.0
        for at, spent in self._stamped:
            excess -= spent
            if excess <= 0:
                return max(0.0, at + self.window - now)
        return math.inf

    def take(self, amount: float) -> None:
        """Count ``amount`` in flight (call only after :meth:`wait_time` returned 0)."""
        self._in_flight += amount

    def stamp(self, amount: float) -> None:
        """``amount`` taken earlier reached the provider now: it expires ``window`` from now."""
        self._in_flight = max(0.0, self._in_flight - amount)
        if amount > 0:
            self._stamped.append((self._clock.now(), amount))
            self._stamped_total += amount

    def refund(self, amount: float) -> None:
        """``amount`` taken earlier never left: forget it."""
        self._in_flight = max(0.0, self._in_flight - amount)

    def __repr__(self) -> str:
        return (
            f"<SlidingWindowLimit [{self.used():g}/{self.limit:g} in {self.window:g}s | "
            f"in flight {self._in_flight:g}]>"
        )


class _Bucket:
    """A leaky bucket of ``capacity`` units draining at ``capacity`` per minute on ``clock``.

    Taking never waits: :class:`ProviderRateLimiter` asks :meth:`wait_time` first and does the
    waiting itself, in arrival order.
    """

    __slots__ = ("_clock", "_drained_at", "_level", "_rate", "capacity")

    def __init__(self, capacity: float, clock: Clock) -> None:
        self.capacity = capacity
        self._rate = capacity / WINDOW_SECONDS
        self._clock = clock
        self._level = 0.0
        self._drained_at = clock.now()

    def _drain(self) -> float:
        now = self._clock.now()
        self._level = max(0.0, self._level - (now - self._drained_at) * self._rate)
        self._drained_at = now
        return self._level

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` fits in the bucket."""
        return max(0.0, (self._drain() + amount - self.capacity) / self._rate)

    def take(self, amount: float) -> None:
        self._level = self._drain() + amount

    def tighten(self, remaining: float) -> None:
        """The server knows better than our estimate: never believe more than it reports."""
        self._level = max(self._drain(), self.capacity - remaining)


class RatePermit:
    """One admitted request: call :meth:`sent` once it has reached the provider.

    Until then its request and tokens count in every window (they never expire); idempotent.
    """

    __slots__ = ("_limiter", "_open", "tokens")

    def __init__(self, limiter: ProviderRateLimiter, tokens: int) -> None:
        self._limiter = limiter
        self.tokens = tokens
        self._open = True

    def sent(self) -> None:
        """The request reached the provider (or ended): its amounts expire a window from now."""
        if self._open:
            self._open = False
            self._limiter._stamp(self)

    def __repr__(self) -> str:
        return f"<RatePermit tokens={self.tokens} {'in flight' if self._open else 'sent'}>"


class ProviderRateLimiter:
    """Paces and bounds the requests sent to one provider (the module docstring has the model).

    Acquisitions are served first come, first served (a large token estimate is not overtaken by
    small ones). Everything runs on the injected clock. Not thread-safe: one event loop.
    """

    def __init__(self, config: RateLimitConfig, *, clock: Clock, name: str | None = None) -> None:
        self.config = config
        self.name = name
        self._clock = clock
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        self._requests = _Bucket(rpm, clock) if rpm is not None else None
        self._tokens = _Bucket(tpm, clock) if tpm is not None else None
        self._request_window = SlidingWindowLimit(rpm, clock=clock) if rpm is not None else None
        self._token_window = SlidingWindowLimit(tpm, clock=clock) if tpm is not None else None
        self._paused_until = float("-inf")
        # Set (and replaced) whenever window capacity is freed by a stamp: wakes a waiter whose
        # wait depended on requests still in flight.
        self._freed = anyio.Event()
        # One waiter at a time keeps arrival order (a large estimate is not overtaken).
        self._turn = anyio.Lock()

    def pause_remaining(self) -> float:
        """Seconds until the current server-imposed pause ends (0.0 when not paused)."""
        return max(0.0, self._paused_until - self._clock.now())

    def pause_for(self, seconds: float) -> None:
        """Let no request leave for ``seconds`` from now (a pause already longer is kept).

        At most :data:`MAX_SERVER_PAUSE`: one huge ``Retry-After`` or ``x-ratelimit-reset-*``
        must not disable the provider until the process restarts.
        """
        seconds = min(seconds, MAX_SERVER_PAUSE)
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock.now() + seconds)

    def window_usage(self) -> tuple[float, float]:
        """Requests and tokens counted in the current 60 s window (in flight included)."""
        requests = self._request_window.used() if self._request_window is not None else 0.0
        tokens = self._token_window.used() if self._token_window is not None else 0.0
        return requests, tokens

    def update_from_headers(self, headers: Mapping[str, str]) -> None:
        """Tighten the limits from a response's ``x-ratelimit-remaining-*``/``reset-*`` headers.

        Unparseable values are ignored: headers can only slow us down, never break a call.
        """
        for kind, limiter in (("requests", self._requests), ("tokens", self._tokens)):
            raw = headers.get(f"x-ratelimit-remaining-{kind}")
            if raw is None:
                continue
            try:
                remaining = float(raw)
            except ValueError:
                continue
            if limiter is not None:
                limiter.tighten(max(0.0, remaining))
            if remaining <= 0:
                reset = parse_reset_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
                if reset is not None:
                    self.pause_for(reset)

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request with ``tokens`` estimated tokens may be sent, and take them.

        For a request sent at once: its amounts are stamped now. Prefer :meth:`admit` when the
        request may wait before it leaves (a connection pool): the bound is then exact.
        Raises like :meth:`admit`.
        """
        permit = await self._admit(tokens)
        permit.sent()

    @asynccontextmanager
    async def admit(self, tokens: int = 0) -> AsyncIterator[RatePermit]:
        """``async with limiter.admit(tokens) as permit:`` send the request inside.

        Waits until one request with ``tokens`` estimated tokens fits. Call ``permit.sent()``
        when the provider has the request (its response headers arrived); leaving the block does
        it otherwise. Raises :class:`LLMTokenLimitError` (``provider_specific``) at once when
        ``tokens`` exceeds the whole tokens-per-minute budget (it could never be served here).
        Cancellation while waiting takes nothing.
        """
        permit = await self._admit(tokens)
        try:
            yield permit
        finally:
            permit.sent()

    async def _admit(self, tokens: int) -> RatePermit:
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        check_within_budget(self.config, tokens, self.name)
        # Check everything, then take everything with no await in between: a cancellation can
        # only happen while nothing is taken. Nobody waiting and room now: no lock needed.
        if self._turn.locked() or self._wait_time(tokens) > 0:
            async with self._turn:
                while (wait := self._wait_time(tokens)) > 0:
                    await self._sleep_or_freed(wait)
                self._take(tokens)
        else:
            self._take(tokens)
        return RatePermit(self, tokens)

    def _take(self, tokens: int) -> None:
        for bucket, amount in ((self._requests, 1.0), (self._tokens, float(tokens))):
            if bucket is not None and amount > 0:
                bucket.take(amount)
        for window, amount in self._windows(tokens):
            window.take(amount)

    def wait_time(self, tokens: int = 0) -> float:
        """Seconds a request with ``tokens`` would wait now before it could be admitted."""
        return self._wait_time(tokens)

    def _wait_time(self, tokens: int) -> float:
        wait = self.pause_remaining()
        for bucket, amount in ((self._requests, 1.0), (self._tokens, float(tokens))):
            if bucket is not None and amount > 0:
                wait = max(wait, bucket.wait_time(amount))
        for window, amount in self._windows(tokens):
            wait = max(wait, window.wait_time(amount))
        return wait

    def _windows(self, tokens: int) -> list[tuple[SlidingWindowLimit, float]]:
        pairs: list[tuple[SlidingWindowLimit, float]] = []
        if self._request_window is not None:
            pairs.append((self._request_window, 1.0))
        if self._token_window is not None and tokens > 0:
            pairs.append((self._token_window, float(tokens)))
        return pairs

    def _stamp(self, permit: RatePermit) -> None:
        windows = self._windows(permit.tokens)
        for window, amount in windows:
            window.stamp(amount)
        if windows and self._turn.locked():  # someone waits, perhaps for this capacity
            self._freed.set()
            self._freed = anyio.Event()

    async def _sleep_or_freed(self, seconds: float) -> None:
        """Sleep ``seconds`` on the clock, or less if a stamp frees window capacity meanwhile."""
        freed = self._freed
        async with anyio.create_task_group() as task_group:
            if seconds != math.inf:
                task_group.start_soon(self._sleep_then_cancel, seconds, task_group.cancel_scope)
            await freed.wait()
            task_group.cancel_scope.cancel()

    async def _sleep_then_cancel(self, seconds: float, scope: anyio.CancelScope) -> None:
        await self._clock.sleep(seconds)
        scope.cancel()

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        rpm = self.config.requests_per_minute
        tpm = self.config.tokens_per_minute
        paused = self.pause_remaining()
        pause = f" paused={paused:.3f}s" if paused > 0 else ""
        return f"<ProviderRateLimiter{label} rpm={rpm} tpm={tpm}{pause}>"
