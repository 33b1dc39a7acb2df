"""What the MetricsActor is told: events, frozen because they cross actor boundaries by ``tell``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CANCELLED",
    "MAILBOX_DEPTH",
    "POOL_CONNECTIONS_IN_USE",
    "ActorRestarted",
    "BreakerTransition",
    "CostWarning",
    "FallbackTaken",
    "GaugeSet",
    "HedgeSent",
    "MetricsEvent",
    "RequestCostWarning",
    "RequestFinished",
]

POOL_CONNECTIONS_IN_USE = "pool_connections_in_use"
"""Gauge name: HTTP connections in use, labelled ``provider``."""
MAILBOX_DEPTH = "mailbox_depth"
"""Gauge name: messages waiting in an actor's mailbox, labelled ``actor``."""

CANCELLED = "cancelled"
"""The ``error_type`` of a call its caller abandoned (a closed socket, a lost hedge)."""


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """One call to a provider ended, successfully (``error_type is None``) or not.

    Times, counts and ``cost`` are finite and >= 0 (the store refuses the event otherwise).
    """

    provider: str
    model: str
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    error_type: str | None = None
    rate_limited: bool = False
    cached_tokens: int = 0
    """Part of ``prompt_tokens``, read from the provider's cache."""
    reasoning_tokens: int = 0
    """Part of ``completion_tokens``, spent reasoning."""
    ttfr_s: float | None = None
    """Seconds to the first reasoning piece (``ttft_s`` is to the first text or tool call)."""


@dataclass(frozen=True, slots=True)
class RequestCostWarning:
    """One answer cost more than its provider's ``cost_warning_threshold`` (USD per request)."""

    provider: str
    model: str
    cost: float
    threshold: float


@dataclass(frozen=True, slots=True)
class FallbackTaken:
    """The router moved a request from one candidate to the next."""

    from_provider: str
    from_model: str
    to_provider: str
    to_model: str
    reason: str


@dataclass(frozen=True, slots=True)
class HedgeSent:
    """A hedged (duplicate) request was sent ``delay_s`` after the primary."""

    provider: str
    model: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """A provider's circuit breaker changed state (``closed``, ``open``, ``half_open``...)."""

    provider: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ActorRestarted:
    """A supervisor restarted ``actor``; ``count`` restarts are added (normally 1)."""

    actor: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class GaugeSet:
    """Set gauge ``name`` (see ``POOL_CONNECTIONS_IN_USE``, ``MAILBOX_DEPTH``) for ``labels``.

    Every sample of one gauge must use the same label names.
    """

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class CostWarning:
    """The day's spend crossed the warning threshold of the daily limit."""

    day: str
    spent: float
    limit: float


MetricsEvent = (
    RequestFinished
    | FallbackTaken
    | HedgeSent
    | BreakerTransition
    | ActorRestarted
    | GaugeSet
    | CostWarning
    | RequestCostWarning
)
"""Everything ``MetricsStore.apply`` accepts."""
