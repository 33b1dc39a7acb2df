"""The durable part of a provider actor: what survives its restarts, and what others may read.

:class:`ProviderState` is created once per provider (the child spec's ``durable``) and kept across
restarts: the rate limiter (the provider's quota did not reset because we restarted), the breaker,
the fingerprint of a rejected key, the parameter rules learned from the upstream, and a
:class:`ProviderHealth` that other actors read without a round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime import Clock

from ._breaker import BreakerState, CircuitBreaker
from ._limits import ProviderRateLimiter
from ._provider_config import ProviderConfig

__all__ = ["ProviderHealth", "ProviderState"]


@dataclass
class ProviderHealth:
    """What other actors may read about a provider without asking it (never mutate it).

    Written only by the provider actor. ``breaker`` is ``closed``, ``open`` or ``half_open``;
    ``limiter`` (set with the breaker) tells whether the upstream paused us (``Retry-After``,
    ``x-ratelimit-reset-*``, clamped to a few minutes).
    """

    clock: Clock | None = None
    breaker: str = "closed"
    open_until: float = 0.0
    restarting: bool = False
    pool_in_use: int = 0
    last_error_type: str | None = None
    auth_rejected: bool = False
    limiter: ProviderRateLimiter | None = field(default=None, repr=False)

    def rate_limit_paused_for(self) -> float:
        """Seconds until the upstream's pause of this provider ends (0.0 when not paused)."""
        return self.limiter.pause_remaining() if self.limiter is not None else 0.0

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through (0.0 when not open)."""
        if self.breaker != "open" or self.clock is None:
            return 0.0
        return max(0.0, self.open_until - self.clock.now())

    def available(self) -> bool:
        """Whether a call now has a chance: not restarting, breaker not open (or its wait over)."""
        return not self.restarting and self.retry_after() == 0.0

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view for ``/health``."""
        return {
            "breaker": self.breaker,
            "retry_after": round(self.retry_after(), 3),
            "restarting": self.restarting,
            "pool_in_use": self.pool_in_use,
            "last_error_type": self.last_error_type,
            "auth_rejected": self.auth_rejected,
            "rate_limit_paused_for": round(self.rate_limit_paused_for(), 3),
        }


@dataclass
class ProviderState:
    """The durable part of a provider actor: created once, kept across its restarts.

    ``limiter`` and ``breaker`` are built by the first instance (they need the kernel's clock).
    """

    health: ProviderHealth = field(default_factory=ProviderHealth)
    limiter: ProviderRateLimiter | None = None
    breaker: CircuitBreaker | None = None
    rejected_key: str | None = field(default=None, repr=False)
    """Fingerprint (sha256) of the last key the provider rejected; never the key itself."""
    on_transition: Callable[[BreakerState, BreakerState], None] | None = field(
        default=None, repr=False)
    make_limiter: Callable[[Clock], ProviderRateLimiter] | None = field(default=None, repr=False)
    """Builds the limiter instead of a local one (the shared windows of a cluster)."""
    learned_params: dict[str, frozenset[str]] = field(default_factory=dict)
    """Per model, the parameters the upstream refused ("Unsupported parameter/value"): not sent
    again (``max_tokens`` refused: sent as ``max_completion_tokens``)."""

    def ensure(self, name: str, config: ProviderConfig, clock: Clock) -> None:
        if self.limiter is None and self.make_limiter is not None:
            self.limiter = self.make_limiter(clock)
        if self.limiter is None:
            self.limiter = ProviderRateLimiter(config.rate_limits, clock=clock, name=name)
        self.health.limiter = self.limiter
        if self.breaker is None:
            self.breaker = CircuitBreaker(
                config.breaker, clock=clock, name=name, on_transition=self._transition
            )
            self.health.clock = clock

    def _transition(self, old: BreakerState, new: BreakerState) -> None:
        self.health.breaker = new.value.lower()
        if new is BreakerState.OPEN and self.breaker is not None and self.health.clock:
            wait = self.breaker.config.wait_duration_in_open_state
            self.health.open_until = self.health.clock.now() + wait
        if self.on_transition is not None:
            self.on_transition(old, new)
