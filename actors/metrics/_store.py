"""The data behind the MetricsActor: counters, fixed-bucket histograms, gauges, Prometheus text.

Pure and synchronous: the actor owns one ``MetricsStore`` and is its only writer, so nothing here
locks. Recording is O(1) (a bisection over a fixed number of buckets); reading a percentile walks
the buckets once.

Why fixed log-spaced buckets rather than keeping samples: memory stays constant however long the
process runs, merging and exporting to Prometheus is exact, and with 24 buckets per decade an
interpolated percentile lies within one bucket of the truth, that is within ~10% of it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, assert_never

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "CANCELLED",
    "LATENCY_BOUNDS",
    "MAILBOX_DEPTH",
    "MAX_MODEL_LABELS",
    "OTHER_MODEL",
    "POOL_CONNECTIONS_IN_USE",
    "ActorRestarted",
    "BreakerTransition",
    "CostWarning",
    "FallbackTaken",
    "GaugeSet",
    "HedgeSent",
    "Histogram",
    "MetricsEvent",
    "MetricsStore",
    "RequestCostWarning",
    "RequestFinished",
]

_PER_DECADE = 24
# 1 ms .. ~316 s, 24 buckets per decade (each bound 10**(1/24) ~ 1.10 times the previous), rounded
# to 6 significant digits so the Prometheus ``le`` labels stay readable.
LATENCY_BOUNDS: tuple[float, ...] = tuple(
    float(f"{10 ** (-3 + k / _PER_DECADE):.6g}") for k in range(0, 5 * _PER_DECADE + 13)
)
# Prometheus gets every 4th bound (6 per decade): cumulative counts at a bound are exact, and
# 34 series per histogram is what a scraper can afford per model.
_EXPORT_STRIDE = 4

POOL_CONNECTIONS_IN_USE = "pool_connections_in_use"
"""Gauge name: HTTP connections in use, labelled ``provider``."""
MAILBOX_DEPTH = "mailbox_depth"
"""Gauge name: messages waiting in an actor's mailbox, labelled ``actor``."""

OTHER_MODEL = "other"
"""The ``model`` label of every model past the first :data:`MAX_MODEL_LABELS` unconfigured ones."""
MAX_MODEL_LABELS = 32
"""How many models outside the configured ones get a label of their own (see MetricsStore)."""

CANCELLED = "cancelled"
"""The ``error_type`` of a call its caller abandoned (a closed socket, a lost hedge)."""

_PREFIX = "mcp_backend_"
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Families the store itself exports; a gauge may not shadow one.
_BUILTIN_NAMES = frozenset(
    {
        "llm_requests",
        "llm_request_duration_seconds",
        "llm_time_to_first_token_seconds",
        "llm_tokens",
        "llm_cost_usd",
        "llm_errors",
        "llm_rate_limited",
        "llm_hedges",
        "llm_fallbacks",
        "breaker_transitions",
        "breaker_state",
        "actor_restarts",
        "metrics_events_dropped",
        "cost_warnings",
        "llm_request_cost_warnings",
    }
)


class Histogram:
    """Counts of observations in fixed buckets, with interpolated percentiles.

    ``bounds`` are the inclusive upper bounds (Prometheus ``le``), strictly increasing and
    positive; one more overflow bucket catches anything larger. Not thread-safe.
    """

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        if not bounds or bounds[0] <= 0 or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError("histogram bounds must be positive and strictly increasing")
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    def record(self, value: float) -> None:
        """Add one observation. Raises ``ValueError`` for a negative or non-finite value."""
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"cannot record {value!r}: observations are finite and >= 0")
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._count += 1
        self._sum += value
        self._min = min(self._min, value)
        self._max = max(self._max, value)

    @property
    def bounds(self) -> tuple[float, ...]:
        """The upper bounds of the finite buckets."""
        return self._bounds

    @property
    def count(self) -> int:
        """How many observations were recorded."""
        return self._count

    @property
    def sum(self) -> float:
        """The sum of all observations."""
        return self._sum

    @property
    def mean(self) -> float:
        """The mean observation (``0.0`` when empty)."""
        return self._sum / self._count if self._count else 0.0

    @property
    def bucket_counts(self) -> tuple[int, ...]:
        """Per-bucket (not cumulative) counts: one per bound, then the overflow bucket."""
        return tuple(self._counts)

    def cumulative_buckets(self, stride: int = 1) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` for every ``stride``-th bound and ``+Inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for i, bound in enumerate(self._bounds):
            running += self._counts[i]
            if i % stride == 0 or i == len(self._bounds) - 1:
                out.append((bound, running))
        out.append((math.inf, self._count))
        return out

    def percentile(self, q: float) -> float | None:
        """Estimate the ``q``-th percentile (``0 <= q <= 100``); ``None`` when empty.

        Interpolates linearly inside the bucket holding the rank (as Prometheus'
        ``histogram_quantile`` does) and clamps to the observed minimum and maximum.
        """
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be within 0..100, got {q!r}")
        if self._count == 0:
            return None
        rank = q / 100 * self._count
        below = 0
        for i, n in enumerate(self._counts):
            if n and below + n >= rank:
                lower = self._bounds[i - 1] if i > 0 else 0.0
                upper = self._bounds[i] if i < len(self._bounds) else self._max
                estimate = lower + (upper - lower) * (rank - below) / n
                return min(max(estimate, self._min), self._max)
            below += n
        return self._max  # unreachable: the buckets sum to count

    def __repr__(self) -> str:
        return f"<Histogram [count: {self._count}, sum: {self._sum:.6g}]>"


# Events. Frozen: they cross actor boundaries by ``tell``.


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """One call to a provider ended, successfully (``error_type is None``) or not."""

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


@dataclass
class _ModelStats:
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
    fallbacks: int = 0
    hedges: int = 0
    cost_warnings: int = 0


class MetricsStore(Collector):
    """Counters, histograms and gauges per ``provider:model`` and for the whole system.

    Feed it events with ``apply``; read it with ``summary()`` or ``prometheus_text()``. It is also
    a ``prometheus_client`` collector, so an embedder may register it on its own registry.
    Not thread-safe: one writer (the MetricsActor).

    The ``model`` label comes from upstream answers (a provider may answer with any name, such as
    a dated snapshot of the requested model), so its values are bounded: the configured
    ``models`` always keep their name, the first ``max_models`` other names seen get theirs, and
    every later one is counted as :data:`OTHER_MODEL`. Series, summaries and memory thus stay
    bounded whatever the upstream says.
    """

    def __init__(
        self, models: Iterable[str] = (), *, max_models: int = MAX_MODEL_LABELS
    ) -> None:
        self._known_models = frozenset(models)
        self._seen_models: set[str] = set()
        self._max_models = max_models
        self._models: dict[str, _ModelStats] = {}
        self._latency = Histogram()
        self._fallbacks: Counter[tuple[str, str, str, str, str]] = Counter()
        self._breaker_transitions: Counter[tuple[str, str]] = Counter()
        self._breaker_state: dict[str, str] = {}
        self._restarts: Counter[str] = Counter()
        self._dropped = 0
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._cost_warnings = 0
        self._last_cost_warning: CostWarning | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def apply(self, event: MetricsEvent) -> None:
        """Record one event. Raises ``ValueError`` for a malformed one (nothing is recorded)."""
        match event:
            case RequestFinished():
                self._request_finished(event)
            case FallbackTaken():
                self._stats(event.from_provider, event.from_model).fallbacks += 1
                self._fallbacks[
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
                self._breaker_transitions[(event.provider, event.new)] += 1
                self._breaker_state[event.provider] = event.new
            case ActorRestarted():
                self._restarts[event.actor] += event.count
            case GaugeSet():
                self._set_gauge(event)
            case CostWarning():
                self._cost_warnings += 1
                self._last_cost_warning = event
            case _:
                assert_never(event)

    def record_dropped(self, count: int = 1) -> None:
        """Count events lost because the MetricsActor's mailbox was full."""
        self._dropped += count

    def _model_label(self, model: str) -> str:
        """``model``, or :data:`OTHER_MODEL` once the unconfigured names are used up."""
        if model in self._known_models or model in self._seen_models:
            return model
        if len(self._seen_models) < self._max_models:
            self._seen_models.add(model)
            return model
        return OTHER_MODEL

    def _stats(self, provider: str, model: str) -> _ModelStats:
        model = self._model_label(model)
        key = f"{provider}:{model}"
        stats = self._models.get(key)
        if stats is None:
            stats = self._models[key] = _ModelStats(provider, model)
        return stats

    def _request_finished(self, event: RequestFinished) -> None:
        # Validate before touching anything, so a bad event leaves no partial trace.
        if not math.isfinite(event.latency_s) or event.latency_s < 0:
            raise ValueError(f"invalid latency_s {event.latency_s!r}")
        if event.ttft_s is not None and (not math.isfinite(event.ttft_s) or event.ttft_s < 0):
            raise ValueError(f"invalid ttft_s {event.ttft_s!r}")
        if event.ttfr_s is not None and (not math.isfinite(event.ttfr_s) or event.ttfr_s < 0):
            raise ValueError(f"invalid ttfr_s {event.ttfr_s!r}")
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
        self._latency.record(event.latency_s)
        if event.ttft_s is not None:
            stats.ttft.record(event.ttft_s)
        if event.ttfr_s is not None:
            stats.ttfr.record(event.ttfr_s)

    def _set_gauge(self, event: GaugeSet) -> None:
        if not _METRIC_NAME.match(event.name) or event.name in _BUILTIN_NAMES:
            raise ValueError(f"invalid gauge name {event.name!r}")
        bad = [k for k in event.labels if not _LABEL_NAME.match(k)]
        if bad:
            raise ValueError(f"invalid label names {bad!r} for gauge {event.name!r}")
        labels = tuple(sorted(event.labels.items()))
        series = self._gauges.setdefault(event.name, {})
        if series:
            expected = [k for k, _ in next(iter(series))]
            if [k for k, _ in labels] != expected:
                raise ValueError(
                    f"gauge {event.name!r} takes labels {expected!r}, got {sorted(event.labels)!r}"
                )
        series[labels] = event.value

    def summary(self) -> dict[str, Any]:
        """A JSON-ready snapshot: totals, ``by_model`` (keyed ``provider:model``), global sections.

        Times are in seconds; percentiles are ``None`` where nothing was observed.
        """
        requests = sum(s.requests for s in self._models.values())
        errors = sum(s.requests - s.successes for s in self._models.values())
        prompt = sum(s.prompt_tokens for s in self._models.values())
        completion = sum(s.completion_tokens for s in self._models.values())
        fallback_reasons: Counter[str] = Counter()
        for (*_, reason), n in self._fallbacks.items():
            fallback_reasons[reason] += n
        return {
            "total_requests": requests,
            "total_errors": errors,
            "total_tokens": prompt + completion,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_cost": sum(s.cost for s in self._models.values()),
            "avg_response_time": self._latency.mean,
            "error_rate": errors / requests if requests else 0.0,
            "latency_p50": self._latency.percentile(50),
            "latency_p95": self._latency.percentile(95),
            "latency_p99": self._latency.percentile(99),
            "by_model": {key: _model_summary(s) for key, s in sorted(self._models.items())},
            "fallbacks": {
                "total": sum(self._fallbacks.values()),
                "by_reason": dict(fallback_reasons),
            },
            "hedges": sum(s.hedges for s in self._models.values()),
            "breakers": {
                provider: {
                    "state": state,
                    "transitions": {
                        new: n for (p, new), n in self._breaker_transitions.items() if p == provider
                    },
                }
                for provider, state in sorted(self._breaker_state.items())
            },
            "restarts": dict(self._restarts),
            "dropped_events": self._dropped,
            "gauges": {
                name: {
                    ",".join(f"{k}={v}" for k, v in labels): value for labels, value in s.items()
                }
                for name, s in sorted(self._gauges.items())
            },
            "cost_warnings": {
                "count": self._cost_warnings,
                "last": None
                if self._last_cost_warning is None
                else {
                    "day": self._last_cost_warning.day,
                    "spent": self._last_cost_warning.spent,
                    "limit": self._last_cost_warning.limit,
                },
            },
        }

    def prometheus_text(self) -> bytes:
        """The store in the Prometheus text exposition format (version 0.0.4)."""
        return bytes(generate_latest(self._registry))

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (``prometheus_client`` ``Collector`` protocol)."""
        models = sorted(self._models.values(), key=lambda s: (s.provider, s.model))
        pm = ["provider", "model"]

        requests = CounterMetricFamily(
            _PREFIX + "llm_requests", "LLM calls by outcome.", labels=[*pm, "outcome"]
        )
        duration = HistogramMetricFamily(
            _PREFIX + "llm_request_duration_seconds", "LLM call latency.", labels=pm
        )
        ttft = HistogramMetricFamily(
            _PREFIX + "llm_time_to_first_token_seconds", "Time to first streamed token.", labels=pm
        )
        tokens = CounterMetricFamily(
            _PREFIX + "llm_tokens", "Tokens by direction.", labels=[*pm, "direction"]
        )
        ttfr = HistogramMetricFamily(
            _PREFIX + "llm_time_to_first_reasoning_seconds",
            "Time to the first streamed reasoning token.", labels=pm,
        )
        by_kind = CounterMetricFamily(
            _PREFIX + "llm_tokens_by_kind",
            "Tokens by kind (cached is part of prompt, reasoning part of completion).",
            labels=[*pm, "kind"],
        )
        cost = CounterMetricFamily(_PREFIX + "llm_cost_usd", "Settled cost in USD.", labels=pm)
        errors = CounterMetricFamily(
            _PREFIX + "llm_errors", "Failed LLM calls by error type.", labels=[*pm, "type"]
        )
        limited = CounterMetricFamily(
            _PREFIX + "llm_rate_limited", "Calls refused by a rate limit.", labels=pm
        )
        hedges = CounterMetricFamily(_PREFIX + "llm_hedges", "Hedged requests sent.", labels=pm)
        over = CounterMetricFamily(
            _PREFIX + "llm_request_cost_warnings",
            "Answers that cost more than the provider's cost_warning_threshold.", labels=pm,
        )
        for s in models:
            lv = [s.provider, s.model]
            # A call its caller abandoned is no failure of the provider: counted apart, so the
            # error rate (and the alert on it) does not move with closed sockets or lost hedges.
            cancelled = s.errors[CANCELLED]
            requests.add_metric([*lv, "success"], s.successes)
            requests.add_metric([*lv, "error"], s.requests - s.successes - cancelled)
            requests.add_metric([*lv, CANCELLED], cancelled)
            duration.add_metric(lv, _prom_buckets(s.latency), s.latency.sum)
            if s.ttft.count:
                ttft.add_metric(lv, _prom_buckets(s.ttft), s.ttft.sum)
            tokens.add_metric([*lv, "input"], s.prompt_tokens)
            tokens.add_metric([*lv, "output"], s.completion_tokens)
            if s.ttfr.count:
                ttfr.add_metric(lv, _prom_buckets(s.ttfr), s.ttfr.sum)
            for kind, n in (("prompt", s.prompt_tokens), ("cached", s.cached_tokens),
                            ("completion", s.completion_tokens),
                            ("reasoning", s.reasoning_tokens)):
                by_kind.add_metric([*lv, kind], n)
            cost.add_metric(lv, s.cost)
            for error_type, n in sorted(s.errors.items()):
                errors.add_metric([*lv, error_type], n)
            limited.add_metric(lv, s.rate_limited)
            hedges.add_metric(lv, s.hedges)
            over.add_metric(lv, s.cost_warnings)
        yield from (requests, duration, ttft, ttfr, tokens, by_kind, cost, errors, limited, hedges,
                    over)

        fallbacks = CounterMetricFamily(
            _PREFIX + "llm_fallbacks",
            "Requests moved to the next candidate.",
            labels=["from_provider", "from_model", "to_provider", "to_model", "reason"],
        )
        for key, n in sorted(self._fallbacks.items()):
            fallbacks.add_metric(list(key), n)
        yield fallbacks

        transitions = CounterMetricFamily(
            _PREFIX + "breaker_transitions",
            "Circuit breaker transitions by the state entered.",
            labels=["provider", "state"],
        )
        for (provider, state), n in sorted(self._breaker_transitions.items()):
            transitions.add_metric([provider, state], n)
        yield transitions

        breaker_state = GaugeMetricFamily(
            _PREFIX + "breaker_state",
            "1 for the current state of each provider's breaker.",
            labels=["provider", "state"],
        )
        for provider, state in sorted(self._breaker_state.items()):
            breaker_state.add_metric([provider, state], 1.0)
        yield breaker_state

        restarts = CounterMetricFamily(
            _PREFIX + "actor_restarts", "Supervisor restarts by actor.", labels=["actor"]
        )
        for actor, n in sorted(self._restarts.items()):
            restarts.add_metric([actor], n)
        yield restarts

        yield CounterMetricFamily(
            _PREFIX + "metrics_events_dropped",
            "Metrics events lost to a full mailbox.",
            value=self._dropped,
        )
        yield CounterMetricFamily(
            _PREFIX + "cost_warnings",
            "Times the daily spend crossed the warning threshold.",
            value=self._cost_warnings,
        )

        for name, series in sorted(self._gauges.items()):
            label_names = [k for k, _ in next(iter(series))]
            gauge = GaugeMetricFamily(_PREFIX + name, f"Gauge {name}.", labels=label_names)
            for labels, value in sorted(series.items()):
                gauge.add_metric([v for _, v in labels], value)
            yield gauge

    def __repr__(self) -> str:
        requests = sum(s.requests for s in self._models.values())
        return f"<MetricsStore [models: {len(self._models)}, requests: {requests}]>"


def _model_summary(s: _ModelStats) -> dict[str, Any]:
    errors = s.requests - s.successes
    return {
        "provider": s.provider,
        "model": s.model,
        "total_requests": s.requests,
        "successes": s.successes,
        "total_errors": errors,
        "errors_by_type": dict(s.errors),
        "error_rate": errors / s.requests if s.requests else 0.0,
        "rate_limited": s.rate_limited,
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "cached_tokens": s.cached_tokens,
        "reasoning_tokens": s.reasoning_tokens,
        "total_cost": s.cost,
        "avg_response_time": s.latency.mean,
        "latency_p50": s.latency.percentile(50),
        "latency_p95": s.latency.percentile(95),
        "latency_p99": s.latency.percentile(99),
        "ttft_p50": s.ttft.percentile(50),
        "ttft_p95": s.ttft.percentile(95),
        "ttft_p99": s.ttft.percentile(99),
        "ttfr_p50": s.ttfr.percentile(50),
        "ttfr_p99": s.ttfr.percentile(99),
        "fallbacks": s.fallbacks,
        "hedges": s.hedges,
        "cost_warnings": s.cost_warnings,
    }


def _prom_buckets(h: Histogram) -> list[tuple[str, float]]:
    return [
        ("+Inf" if math.isinf(bound) else repr(bound), float(n))
        for bound, n in h.cumulative_buckets(_EXPORT_STRIDE)
    ]
