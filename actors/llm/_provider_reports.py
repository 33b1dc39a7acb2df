"""What a provider actor tells the metrics actor: each finished call, breaker transitions, and
the pool gauge (at most once a second). Never awaits: ``try_tell``, a full metrics mailbox drops
the event rather than slow a call."""

from __future__ import annotations

import logging
from typing import Final

from actors.metrics import (
    POOL_CONNECTIONS_IN_USE,
    BreakerTransition,
    GaugeSet,
    RequestFinished,
)
from runtime import ActorRef, Outcome

from ._breaker import BreakerState
from ._messages import LLMResponse, ProviderCall, Usage
from ._stream import Progress

__all__ = ["ProviderReports"]

logger = logging.getLogger(__name__)

_GAUGE_INTERVAL: Final = 1.0


def counted_model(call: ProviderCall, response: LLMResponse | None) -> str:
    """The model a call is counted under: a model the call asked for, never one the upstream
    made up.

    The upstream's answered name only when the call sent it as one of OpenRouter's native
    fallbacks (the upstream chose among models we named); otherwise the call's model, whatever
    the answer says (a dated snapshot, or a fresh name on every answer, which would take every
    metrics label kept for unconfigured models).
    """
    answered = response.model if response is not None else None
    if answered and answered in call.fallback_models:
        return answered
    return call.model


class ProviderReports:
    """Provider ``name``'s events; ``metrics`` may be set later (found when the actor starts)."""

    def __init__(self, name: str, metrics: ActorRef | None) -> None:
        self.name = name
        self.metrics = metrics
        self._gauge_sent_at = float("-inf")

    def finished(self, call: ProviderCall, progress: Progress, latency: float,
                 response: LLMResponse | None, outcome: Outcome, *, now: float,
                 pool_in_use: int) -> None:
        """A call ended (answered, failed or cancelled); ``response`` when it was answered."""
        metrics = self.metrics
        if metrics is None:
            return
        response = response if response is not None else progress.streamed
        usage = response.usage if response is not None else Usage()
        error_type = (
            "cancelled" if outcome.cancelled
            else type(outcome.error).__name__ if outcome.error is not None else None
        )
        metrics.try_tell(RequestFinished(
            provider=self.name,
            model=counted_model(call, response),
            latency_s=latency,
            ttft_s=progress.ttft,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.total_cost or 0.0,
            error_type=error_type,
            rate_limited=progress.rate_limited,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            ttfr_s=progress.ttfr,
        ))
        if now - self._gauge_sent_at >= _GAUGE_INTERVAL:
            self._gauge_sent_at = now
            metrics.try_tell(GaugeSet(POOL_CONNECTIONS_IN_USE, {"provider": self.name},
                                      float(pool_in_use)))

    def breaker_transition(self, old: BreakerState, new: BreakerState) -> None:
        """The breaker changed state (logged, and counted)."""
        logger.info("%s: circuit breaker %s -> %s", self.name, old.value, new.value)
        if self.metrics is not None:
            self.metrics.try_tell(BreakerTransition(self.name, old.value.lower(),
                                                    new.value.lower()))
