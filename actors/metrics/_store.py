"""The data behind the MetricsActor: counters, fixed-bucket histograms, gauges, Prometheus text.

Pure and synchronous: the actor owns one ``MetricsStore`` and is its only writer, so nothing here
locks. The events it applies are in ``_events``, the histograms in ``_histogram``, what it counts
in ``_tallies`` and the Prometheus families in ``_prometheus``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, assert_never

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ._events import (
    ActorRestarted,
    BreakerTransition,
    CostWarning,
    FallbackTaken,
    GaugeSet,
    HedgeSent,
    MetricsEvent,
    RequestCostWarning,
    RequestFinished,
)
from ._prometheus import BUILTIN_NAMES, metric_families
from ._tallies import ModelStats, Tallies, mean_of

__all__ = ["MAX_MODEL_LABELS", "OTHER_MODEL", "MetricsStore"]

OTHER_MODEL = "other"
"""The ``model`` label of every model past the first :data:`MAX_MODEL_LABELS` unconfigured ones."""
MAX_MODEL_LABELS = 32
"""How many models outside the configured ones get a label of their own (see MetricsStore)."""

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MetricsStore(Collector):
    """Counters, histograms and gauges per ``provider:model`` and for the whole system.

    Feed it events with ``apply``; read it with ``summary()`` or ``prometheus_text()``. It is also
    a ``prometheus_client`` collector, so an embedder may register it on its own registry.
    Not thread-safe: one writer (the MetricsActor).

    The ``model`` label is the model a call asked for (a provider never counts a call under a
    name its upstream made up), which a caller of the runtime may choose, so its values are
    bounded: the configured ``models`` always keep their name, the first ``max_models`` other
    names seen get theirs, and every later one is counted as :data:`OTHER_MODEL`. Series,
    summaries and memory (a ring of 100 recent times per label) thus stay bounded.
    """

    def __init__(
        self, models: Iterable[str] = (), *, max_models: int = MAX_MODEL_LABELS
    ) -> None:
        self._known_models = frozenset(models)
        self._seen_models: set[str] = set()
        self._max_models = max_models
        self._models: dict[str, ModelStats] = {}
        self._tallies = Tallies()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def apply(self, event: MetricsEvent) -> None:
        """Record one event. Raises ``ValueError`` for a malformed one (nothing is recorded)."""
        match event:
            case RequestFinished():
                self._request_finished(event)
            case FallbackTaken():
                self._stats(event.from_provider, event.from_model).fallbacks += 1
                self._tallies.fallbacks[
                    (
                        event.from_provider,
                        self._model_label(event.from_model),
                        event.to_provider,
                        self._model_label(event.to_model),
                        event.reason,
                    )
                ] += 1
            case HedgeSent():
                self._stats(event.provider, event.model).hedges += 1
            case RequestCostWarning():
                self._stats(event.provider, event.model).cost_warnings += 1
            case BreakerTransition():
                self._tallies.breaker_transitions[(event.provider, event.new)] += 1
                self._tallies.breaker_state[event.provider] = event.new
            case ActorRestarted():
                self._tallies.restarts[event.actor] += event.count
            case GaugeSet():
                self._set_gauge(event)
            case CostWarning():
                self._tallies.cost_warnings += 1
                self._tallies.last_cost_warning = event
            case _:
                assert_never(event)

    def record_dropped(self, count: int = 1) -> None:
        """Count events lost because the MetricsActor's mailbox was full."""
        self._tallies.dropped += count

    def _model_label(self, model: str) -> str:
        """``model``, or :data:`OTHER_MODEL` once the unconfigured names are used up."""
        if model in self._known_models or model in self._seen_models:
            return model
        if len(self._seen_models) < self._max_models:
            self._seen_models.add(model)
            return model
        return OTHER_MODEL

    def _stats(self, provider: str, model: str) -> ModelStats:
        model = self._model_label(model)
        key = f"{provider}:{model}"
        stats = self._models.get(key)
        if stats is None:
            stats = self._models[key] = ModelStats(provider, model)
        return stats

    def _request_finished(self, event: RequestFinished) -> None:
        # Validate before touching anything, so a bad event leaves no partial trace.
        if not math.isfinite(event.latency_s) or event.latency_s < 0:
            raise ValueError(f"invalid latency_s {event.latency_s!r}")
        if event.ttft_s is not None and (not math.isfinite(event.ttft_s) or event.ttft_s < 0):
            raise ValueError(f"invalid ttft_s {event.ttft_s!r}")
        if event.ttfr_s is not None and (not math.isfinite(event.ttfr_s) or event.ttfr_s < 0):
            raise ValueError(f"invalid ttfr_s {event.ttfr_s!r}")
        # Counters only grow: a NaN would stick for good, a negative would decrease them.
        if not math.isfinite(event.cost) or event.cost < 0:
            raise ValueError(f"invalid cost {event.cost!r}")
        counts = {"prompt_tokens": event.prompt_tokens,
                  "completion_tokens": event.completion_tokens,
                  "cached_tokens": event.cached_tokens, "reasoning_tokens": event.reasoning_tokens}
        for name, count in counts.items():
            if count < 0:
                raise ValueError(f"invalid {name} {count!r}")
        stats = self._stats(event.provider, event.model)
        stats.requests += 1
        if event.error_type is None:
            stats.successes += 1
        else:
            stats.errors[event.error_type] += 1
        if event.rate_limited:
            stats.rate_limited += 1
        stats.prompt_tokens += event.prompt_tokens
        stats.completion_tokens += event.completion_tokens
        stats.cached_tokens += event.cached_tokens
        stats.reasoning_tokens += event.reasoning_tokens
        stats.cost += event.cost
        stats.latency.record(event.latency_s)
        stats.recent_latency.append(event.latency_s)
        self._tallies.latency.record(event.latency_s)
        if event.ttft_s is not None:
            stats.ttft.record(event.ttft_s)
        if event.ttfr_s is not None:
            stats.ttfr.record(event.ttfr_s)

    def _set_gauge(self, event: GaugeSet) -> None:
        if not _METRIC_NAME.match(event.name) or event.name in BUILTIN_NAMES:
            raise ValueError(f"invalid gauge name {event.name!r}")
        bad = [k for k in event.labels if not _LABEL_NAME.match(k)]
        if bad:
            raise ValueError(f"invalid label names {bad!r} for gauge {event.name!r}")
        labels = tuple(sorted(event.labels.items()))
        series = self._tallies.gauges.setdefault(event.name, {})
        if series:
            expected = [k for k, _ in next(iter(series))]
            if [k for k, _ in labels] != expected:
                raise ValueError(
                    f"gauge {event.name!r} takes labels {expected!r}, got {sorted(event.labels)!r}"
                )
        series[labels] = event.value

    def summary(self) -> dict[str, Any]:
        """A JSON-ready snapshot: totals, ``by_model`` (keyed ``provider:model``), global sections.

        Times are in seconds; percentiles are ``None`` where nothing was observed (they, and the
        Prometheus histograms, count every request). ``avg_response_time`` is the
        specification's: the mean of the last 100 times of every ``provider:model``, pooled (a
        model's own, in ``by_model``, of its last 100).
        """
        requests = sum(s.requests for s in self._models.values())
        errors = sum(s.requests - s.successes for s in self._models.values())
        prompt = sum(s.prompt_tokens for s in self._models.values())
        completion = sum(s.completion_tokens for s in self._models.values())
        fallback_reasons: Counter[str] = Counter()
        for (*_, reason), n in self._tallies.fallbacks.items():
            fallback_reasons[reason] += n
        return {
            "total_requests": requests,
            "total_errors": errors,
            "total_tokens": prompt + completion,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_cost": sum(s.cost for s in self._models.values()),
            "avg_response_time": mean_of(
                [t for s in self._models.values() for t in s.recent_latency]),
            "error_rate": errors / requests if requests else 0.0,
            "latency_p50": self._tallies.latency.percentile(50),
            "latency_p95": self._tallies.latency.percentile(95),
            "latency_p99": self._tallies.latency.percentile(99),
            "by_model": {key: s.summary() for key, s in sorted(self._models.items())},
            "fallbacks": {
                "total": sum(self._tallies.fallbacks.values()),
                "by_reason": dict(fallback_reasons),
            },
            "hedges": sum(s.hedges for s in self._models.values()),
            "breakers": {
                provider: {
                    "state": state,
                    "transitions": {
                        new: n for (p, new), n in self._tallies.breaker_transitions.items()
                        if p == provider
                    },
                }
                for provider, state in sorted(self._tallies.breaker_state.items())
            },
            "restarts": dict(self._tallies.restarts),
            "dropped_events": self._tallies.dropped,
            "gauges": {
                name: {
                    ",".join(f"{k}={v}" for k, v in labels): value for labels, value in s.items()
                }
                for name, s in sorted(self._tallies.gauges.items())
            },
            "cost_warnings": {
                "count": self._tallies.cost_warnings,
                "last": None
                if self._tallies.last_cost_warning is None
                else {
                    "day": self._tallies.last_cost_warning.day,
                    "spent": self._tallies.last_cost_warning.spent,
                    "limit": self._tallies.last_cost_warning.limit,
                },
            },
        }

    def prometheus_text(self) -> bytes:
        """The store in the Prometheus text exposition format (version 0.0.4)."""
        return bytes(generate_latest(self._registry))

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (``prometheus_client`` ``Collector`` protocol)."""
        return metric_families(self._models.values(), self._tallies)

    def __repr__(self) -> str:
        requests = sum(s.requests for s in self._models.values())
        return f"<MetricsStore [models: {len(self._models)}, requests: {requests}]>"
