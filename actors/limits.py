"""Client-side rate limiting for one provider: requests and tokens per minute, plus server pauses.

The limits are token buckets (:class:`aiolimiter.AsyncLimiter`), the model OpenAI itself enforces
and reports in its ``x-ratelimit-*`` headers: a bucket holds one minute's budget and refills
continuously at ``limit / 60`` per second. A request takes one request and its estimated tokens.
So the provider, counting the same way, never sees us above the configured limits; over any window
of ``T`` seconds at most ``limit * (1 + T / 60)`` pass (a full bucket's burst plus the refill).

On top of the buckets, the server can only make us slower, never faster:

* ``x-ratelimit-remaining-*`` lower than what our bucket believes drains our bucket to match;
  ``remaining == 0`` pauses all requests until the matching ``x-ratelimit-reset-*``;
* ``Retry-After`` (passed to :meth:`ProviderRateLimiter.pause_for`) pauses all requests.

Pauses run on the injected clock; the buckets run on the event loop's clock (aiolimiter reads
``loop.time()``), which is why this module needs the asyncio backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import anyio
from aiolimiter import AsyncLimiter
from pydantic import BaseModel, ConfigDict, Field

from runtime._clock import Clock

from .errors import LLMTokenLimitError

__all__ = ["ProviderRateLimiter", "RateLimitConfig", "parse_reset_duration"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class RateLimitConfig(BaseModel):
    """Per-minute limits of one provider; ``None`` means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


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


def _refund(limiter: AsyncLimiter, amount: float) -> None:
    # aiolimiter has no release. Taking ``amount`` off the (freshly leaked) level, clamped at 0,
    # leaves exactly the level the bucket would have had if the acquisition had never happened.
    # Private attributes of aiolimiter 1.x (pinned <2); tests/test_limits.py pins the behaviour.
    limiter._leak()
    limiter._level = max(0.0, limiter._level - amount)
    limiter._wake_next()


def _tighten(limiter: AsyncLimiter, remaining: float) -> None:
    # The server knows better than our estimate: never believe more capacity than it reports.
    limiter._leak()
    limiter._level = max(limiter._level, limiter.max_rate - remaining)


class ProviderRateLimiter:
    """Paces the requests sent to one provider (see the module docstring for the model).

    Acquisitions are served first come, first served (a large token estimate is not overtaken by
    small ones). Needs the asyncio backend; one instance per event loop.
    """

    def __init__(self, config: RateLimitConfig, *, clock: Clock, name: str | None = None) -> None:
        self.config = config
        self.name = name
        self._clock = clock
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        self._requests = AsyncLimiter(rpm, 60.0) if rpm is not None else None
        self._tokens = AsyncLimiter(tpm, 60.0) if tpm is not None else None
        self._paused_until = float("-inf")
        # aiolimiter wakes the smallest amount first; one waiter at a time keeps arrival order.
        self._turn = anyio.Lock()

    def pause_remaining(self) -> float:
        """Seconds until the current server-imposed pause ends (0.0 when not paused)."""
        return max(0.0, self._paused_until - self._clock.now())

    def pause_for(self, seconds: float) -> None:
        """Let no request leave for ``seconds`` from now (a pause already longer is kept)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock.now() + seconds)

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
                _tighten(limiter, max(0.0, remaining))
            if remaining <= 0:
                reset = parse_reset_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
                if reset is not None:
                    self.pause_for(reset)

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request with ``tokens`` estimated tokens may be sent, and take them.

        Raises :class:`LLMTokenLimitError` at once when ``tokens`` exceeds the whole
        tokens-per-minute budget (it could never be served). Cancellation while waiting takes
        nothing: capacity acquired before the cancellation is given back.
        """
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        tpm = self.config.tokens_per_minute
        if tpm is not None and tokens > tpm:
            raise LLMTokenLimitError(
                f"estimated {tokens} tokens exceed the whole budget of {tpm} tokens per minute"
                + (f" of {self.name}" if self.name else ""),
                provider=self.name,
            )
        async with self._turn:
            await self._wait_for_pause()
            taken: list[tuple[AsyncLimiter, float]] = []
            try:
                for limiter, amount in ((self._requests, 1.0), (self._tokens, float(tokens))):
                    if limiter is not None and amount > 0:
                        await limiter.acquire(amount)
                        taken.append((limiter, amount))
                # A pause may have begun while we waited for capacity: it binds us too.
                await self._wait_for_pause()
            except BaseException:
                for limiter, amount in taken:
                    _refund(limiter, amount)
                raise

    async def _wait_for_pause(self) -> None:
        while (remaining := self.pause_remaining()) > 0:
            await self._clock.sleep(remaining)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        rpm = self.config.requests_per_minute
        tpm = self.config.tokens_per_minute
        paused = self.pause_remaining()
        pause = f" paused={paused:.3f}s" if paused > 0 else ""
        return f"<ProviderRateLimiter{label} rpm={rpm} tpm={tpm}{pause}>"
