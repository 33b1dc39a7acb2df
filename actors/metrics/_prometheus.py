"""The store in Prometheus' terms: the metric families, built from the tallies on every scrape.

Every family is prefixed ``mcp_backend_``. A call its caller abandoned (``error_type``
``cancelled``) is counted as its own outcome, not as an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ._events import CANCELLED
from ._histogram import prometheus_buckets
from ._tallies import ModelStats, Tallies

__all__ = ["BUILTIN_NAMES", "PREFIX", "metric_families"]

PREFIX = "mcp_backend_"

BUILTIN_NAMES = frozenset(
    {
        "llm_requests",
        "llm_request_duration_seconds",
        "llm_time_to_first_token_seconds",
        "llm_time_to_first_reasoning_seconds",
        "llm_tokens",
        "llm_tokens_by_kind",
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
"""Families (without :data:`PREFIX`) the store exports itself; a gauge may not shadow one."""


def metric_families(models: Iterable[ModelStats], tallies: Tallies) -> Iterator[Metric]:
    """Every family, series sorted by their labels."""
    ordered = sorted(models, key=lambda s: (s.provider, s.model))
    pm = ["provider", "model"]

    requests = CounterMetricFamily(
        PREFIX + "llm_requests", "LLM calls by outcome.", labels=[*pm, "outcome"]
    )
    duration = HistogramMetricFamily(
        PREFIX + "llm_request_duration_seconds", "LLM call latency.", labels=pm
    )
    ttft = HistogramMetricFamily(
        PREFIX + "llm_time_to_first_token_seconds", "Time to first streamed token.", labels=pm
    )
    tokens = CounterMetricFamily(
        PREFIX + "llm_tokens", "Tokens by direction.", labels=[*pm, "direction"]
    )
    ttfr = HistogramMetricFamily(
        PREFIX + "llm_time_to_first_reasoning_seconds",
        "Time to the first streamed reasoning token.", labels=pm,
    )
    by_kind = CounterMetricFamily(
        PREFIX + "llm_tokens_by_kind",
        "Tokens by kind (cached is part of prompt, reasoning part of completion).",
        labels=[*pm, "kind"],
    )
    cost = CounterMetricFamily(PREFIX + "llm_cost_usd", "Settled cost in USD.", labels=pm)
    errors = CounterMetricFamily(
        PREFIX + "llm_errors", "Failed LLM calls by error type.", labels=[*pm, "type"]
    )
    limited = CounterMetricFamily(
        PREFIX + "llm_rate_limited", "Calls refused by a rate limit.", labels=pm
    )
    hedges = CounterMetricFamily(PREFIX + "llm_hedges", "Hedged requests sent.", labels=pm)
    over = CounterMetricFamily(
        PREFIX + "llm_request_cost_warnings",
        "Answers that cost more than the provider's cost_warning_threshold.", labels=pm,
    )
    for s in ordered:
        lv = [s.provider, s.model]
        # A call its caller abandoned is no failure of the provider: counted apart, so the
        # error rate (and the alert on it) does not move with closed sockets or lost hedges.
        cancelled = s.errors[CANCELLED]
        requests.add_metric([*lv, "success"], s.successes)
        requests.add_metric([*lv, "error"], s.requests - s.successes - cancelled)
        requests.add_metric([*lv, CANCELLED], cancelled)
        duration.add_metric(lv, prometheus_buckets(s.latency), s.latency.sum)
        if s.ttft.count:
            ttft.add_metric(lv, prometheus_buckets(s.ttft), s.ttft.sum)
        tokens.add_metric([*lv, "input"], s.prompt_tokens)
        tokens.add_metric([*lv, "output"], s.completion_tokens)
        if s.ttfr.count:
            ttfr.add_metric(lv, prometheus_buckets(s.ttfr), s.ttfr.sum)
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
        PREFIX + "llm_fallbacks",
        "Requests moved to the next candidate.",
        labels=["from_provider", "from_model", "to_provider", "to_model", "reason"],
    )
    for key, n in sorted(tallies.fallbacks.items()):
        fallbacks.add_metric(list(key), n)
    yield fallbacks

    transitions = CounterMetricFamily(
        PREFIX + "breaker_transitions",
        "Circuit breaker transitions by the state entered.",
        labels=["provider", "state"],
    )
    for (provider, state), n in sorted(tallies.breaker_transitions.items()):
        transitions.add_metric([provider, state], n)
    yield transitions

    breaker_state = GaugeMetricFamily(
        PREFIX + "breaker_state",
        "1 for the current state of each provider's breaker.",
        labels=["provider", "state"],
    )
    for provider, state in sorted(tallies.breaker_state.items()):
        breaker_state.add_metric([provider, state], 1.0)
    yield breaker_state

    restarts = CounterMetricFamily(
        PREFIX + "actor_restarts", "Supervisor restarts by actor.", labels=["actor"]
    )
    for actor, n in sorted(tallies.restarts.items()):
        restarts.add_metric([actor], n)
    yield restarts

    yield CounterMetricFamily(
        PREFIX + "metrics_events_dropped",
        "Metrics events lost to a full mailbox.",
        value=tallies.dropped,
    )
    yield CounterMetricFamily(
        PREFIX + "cost_warnings",
        "Times the daily spend crossed the warning threshold.",
        value=tallies.cost_warnings,
    )

    for name, series in sorted(tallies.gauges.items()):
        label_names = [k for k, _ in next(iter(series))]
        gauge = GaugeMetricFamily(PREFIX + name, f"Gauge {name}.", labels=label_names)
        for labels, value in sorted(series.items()):
            gauge.add_metric([v for _, v in labels], value)
        yield gauge
