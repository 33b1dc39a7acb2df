"""What the MetricsStore counts: per ``provider:model`` (:class:`ModelStats`) and for the whole
system (:class:`Tallies`). Plain data: the store writes it, the summary and the Prometheus export
read it."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from ._events import CostWarning
from ._histogram import Histogram

__all__ = ["RECENT_TIMES", "FallbackKey", "ModelStats", "Tallies", "mean_of"]

RECENT_TIMES = 100
"""How many of its latest response times a ``provider:model`` keeps for ``avg_response_time``
(the specification's "last 100")."""

FallbackKey = tuple[str, str, str, str, str]
"""``(from_provider, from_model, to_provider, to_model, reason)``."""


@dataclass
class ModelStats:
    """The counters and histograms of one ``provider:model``."""

    provider: str
    model: str
    requests: int = 0
    successes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)
    ttfr: Histogram = field(default_factory=Histogram)
    recent_latency: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_TIMES))
    """The last :data:`RECENT_TIMES` latencies (a ring: appending drops the oldest)."""
    fallbacks: int = 0
    hedges: int = 0
    cost_warnings: int = 0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready snapshot (times in seconds; ``None`` percentiles where none observed)."""
        errors = self.requests - self.successes
        return {
            "provider": self.provider,
            "model": self.model,
            "total_requests": self.requests,
            "successes": self.successes,
            "total_errors": errors,
            "errors_by_type": dict(self.errors),
            "error_rate": errors / self.requests if self.requests else 0.0,
            "rate_limited": self.rate_limited,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_cost": self.cost,
            "avg_response_time": mean_of(self.recent_latency),
            "latency_p50": self.latency.percentile(50),
            "latency_p95": self.latency.percentile(95),
            "latency_p99": self.latency.percentile(99),
            "ttft_p50": self.ttft.percentile(50),
            "ttft_p95": self.ttft.percentile(95),
            "ttft_p99": self.ttft.percentile(99),
            "ttfr_p50": self.ttfr.percentile(50),
            "ttfr_p99": self.ttfr.percentile(99),
            "fallbacks": self.fallbacks,
            "hedges": self.hedges,
            "cost_warnings": self.cost_warnings,
        }


def mean_of(times: deque[float] | list[float]) -> float:
    """The mean of ``times`` (``0.0`` when empty), summed exactly (``math.fsum``)."""
    return math.fsum(times) / len(times) if times else 0.0


@dataclass
class Tallies:
    """What the store counts beside the models: latency overall, fallbacks, breakers, restarts,
    dropped events, gauges and cost warnings."""

    latency: Histogram = field(default_factory=Histogram)
    fallbacks: Counter[FallbackKey] = field(default_factory=Counter)
    breaker_transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    """By ``(provider, state entered)``."""
    breaker_state: dict[str, str] = field(default_factory=dict)
    restarts: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = field(default_factory=dict)
    """By gauge name, then by its sorted ``(label, value)`` pairs."""
    cost_warnings: int = 0
    last_cost_warning: CostWarning | None = None
