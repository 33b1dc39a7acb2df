"""Metrics: the one actor that records every event, and the store behind it (Prometheus text)."""

from ._actor import GetPrometheus, GetSummary, metrics_child_spec
from ._events import (
    POOL_CONNECTIONS_IN_USE,
    ActorRestarted,
    BreakerTransition,
    CostWarning,
    FallbackTaken,
    GaugeSet,
    HedgeSent,
    RequestCostWarning,
    RequestFinished,
)
from ._store import MetricsStore

__all__ = [
    "POOL_CONNECTIONS_IN_USE",
    "ActorRestarted",
    "BreakerTransition",
    "CostWarning",
    "FallbackTaken",
    "GaugeSet",
    "GetPrometheus",
    "GetSummary",
    "HedgeSent",
    "MetricsStore",
    "RequestCostWarning",
    "RequestFinished",
    "metrics_child_spec",
]
