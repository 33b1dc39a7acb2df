"""MetricsStore and its parts: histogram accuracy, the summary, the Prometheus text."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics._events import (
    MAILBOX_DEPTH,
    POOL_CONNECTIONS_IN_USE,
    ActorRestarted,
    BreakerTransition,
    CostWarning,
    FallbackTaken,
    GaugeSet,
    HedgeSent,
    RequestFinished,
)
from actors.metrics._histogram import LATENCY_BOUNDS, Histogram
from actors.metrics._store import MetricsStore

# Each bucket is 10**(1/24) ~ 1.1007 times the previous (bounds rounded to 6 digits): an
# interpolated estimate and the exact value share a bucket, so they differ by at most that ratio.
BUCKET_ERROR = 0.101


def exact_percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of the samples."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ok(provider: str = "openai", model: str = "gpt-4o-mini", **kw: object) -> RequestFinished:
    fields: dict[str, object] = {
        "latency_s": 0.5,
        "ttft_s": 0.1,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost": 0.001,
        "error_type": None,
        "rate_limited": False,
    }
    fields.update(kw)
    return RequestFinished(provider, model, **fields)  # type: ignore[arg-type]


def test_bounds_are_log_spaced_from_1ms_to_300s_within_ten_percent() -> None:
    assert LATENCY_BOUNDS[0] == 0.001
    assert LATENCY_BOUNDS[-1] >= 300
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_BOUNDS)]
    assert max(ratios) < 1 + BUCKET_ERROR


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("q", [1, 10, 50, 90, 95, 99, 99.9])
def test_percentile_is_within_one_bucket_of_the_exact_value(seed: int, q: float) -> None:
    rng = random.Random(seed)
    # Log-normal around 200 ms, clipped to the bucketed range: a realistic latency shape.
    samples = [min(max(rng.lognormvariate(math.log(0.2), 1.2), 0.001), 300.0) for _ in range(5000)]
    h = Histogram()
    for s in samples:
        h.record(s)

    exact = exact_percentile(samples, q)
    estimate = h.percentile(q)

    assert estimate is not None
    assert abs(estimate - exact) / exact <= BUCKET_ERROR
    assert h.count == 5000
    assert h.sum == pytest.approx(sum(samples))


def test_percentile_of_few_samples_is_clamped_to_observed_range() -> None:
    h = Histogram()
    h.record(0.25)
    assert h.percentile(0) == 0.25
    assert h.percentile(50) == 0.25
    assert h.percentile(100) == 0.25


def test_overflow_bucket_reports_the_maximum() -> None:
    h = Histogram()
    h.record(500.0)
    h.record(900.0)
    assert h.bucket_counts[-1] == 2
    assert h.percentile(100) == 900.0
    assert h.percentile(99) is not None
    assert 500.0 <= h.percentile(99) <= 900.0  # type: ignore[operator]


def test_empty_histogram_has_no_percentile() -> None:
    h = Histogram()
    assert h.percentile(50) is None
    assert h.mean == 0.0
    assert repr(h) == "<Histogram [count: 0, sum: 0]>"


def test_bucket_counts_follow_prometheus_le_semantics() -> None:
    h = Histogram(bounds=[1.0, 2.0])
    for v in (0.5, 1.0, 1.5, 2.0, 3.0):
        h.record(v)
    assert h.bucket_counts == (2, 2, 1)
    assert h.cumulative_buckets() == [(1.0, 2), (2.0, 4), (math.inf, 5)]


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_histogram_rejects_invalid_observations(value: float) -> None:
    h = Histogram()
    with pytest.raises(ValueError, match=r"^cannot record .*: observations are finite and >= 0$"):
        h.record(value)
    assert h.count == 0


def test_histogram_rejects_unordered_bounds_and_bad_percentiles() -> None:
    with pytest.raises(ValueError, match=r"^histogram bounds must be positive and strictly"):
        Histogram(bounds=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"^percentile must be within 0\.\.100, got 101$"):
        Histogram().percentile(101)


def test_summary_totals_and_per_model_sections() -> None:
    store = MetricsStore()
    store.apply(ok(latency_s=1.0, cost=0.002))
    store.apply(ok(latency_s=3.0, cost=0.004, ttft_s=None))
    store.apply(
        ok(
            "openrouter",
            "openai/gpt-4o-mini",
            latency_s=2.0,
            ttft_s=None,
            prompt_tokens=0,
            completion_tokens=0,
            cost=0.0,
            error_type="LLMRateLimitError",
            rate_limited=True,
        )
    )
    store.apply(FallbackTaken("openrouter", "openai/gpt-4o-mini", "openai", "gpt-4o-mini", "429"))
    store.apply(HedgeSent("openai", "gpt-4o-mini", 0.2))

    summary = store.summary()

    assert summary["total_requests"] == 3
    assert summary["total_errors"] == 1
    assert summary["total_tokens"] == 30
    assert summary["total_cost"] == pytest.approx(0.006)
    assert summary["avg_response_time"] == pytest.approx(2.0)
    assert summary["error_rate"] == pytest.approx(1 / 3)
    assert summary["fallbacks"] == {"total": 1, "by_reason": {"429": 1}}
    assert summary["hedges"] == 1
    assert set(summary["by_model"]) == {"openai:gpt-4o-mini", "openrouter:openai/gpt-4o-mini"}

    openai = summary["by_model"]["openai:gpt-4o-mini"]
    assert openai["total_requests"] == 2
    assert openai["successes"] == 2
    assert openai["error_rate"] == 0.0
    assert openai["total_tokens"] == 30
    assert openai["hedges"] == 1
    assert openai["latency_p50"] == pytest.approx(1.0, rel=BUCKET_ERROR)
    assert openai["latency_p99"] == pytest.approx(3.0, rel=BUCKET_ERROR)
    assert openai["ttft_p50"] == pytest.approx(0.1)
    for key in ("latency_p95", "ttft_p95", "ttft_p99", "avg_response_time", "total_cost"):
        assert key in openai

    router = summary["by_model"]["openrouter:openai/gpt-4o-mini"]
    assert router["errors_by_type"] == {"LLMRateLimitError": 1}
    assert router["rate_limited"] == 1
    assert router["fallbacks"] == 1
    assert router["ttft_p50"] is None


def test_summary_global_sections() -> None:
    store = MetricsStore()
    store.apply(BreakerTransition("openai", "closed", "open"))
    store.apply(BreakerTransition("openai", "open", "half_open"))
    store.apply(ActorRestarted("provider:openai"))
    store.apply(ActorRestarted("provider:openai", count=2))
    store.apply(GaugeSet(POOL_CONNECTIONS_IN_USE, {"provider": "openai"}, 7))
    store.apply(GaugeSet(MAILBOX_DEPTH, {"actor": "router"}, 3))
    store.apply(CostWarning("2026-11-25", 8.5, 10.0))
    store.record_dropped(4)

    summary = store.summary()

    assert summary["breakers"] == {
        "openai": {"state": "half_open", "transitions": {"open": 1, "half_open": 1}}
    }
    assert summary["restarts"] == {"provider:openai": 3}
    assert summary["dropped_events"] == 4
    assert summary["gauges"] == {
        MAILBOX_DEPTH: {"actor=router": 3},
        POOL_CONNECTIONS_IN_USE: {"provider=openai": 7},
    }
    assert summary["cost_warnings"] == {
        "count": 1,
        "last": {"day": "2026-11-25", "spent": 8.5, "limit": 10.0},
    }


def test_invalid_events_are_rejected_without_partial_effects() -> None:
    store = MetricsStore()
    with pytest.raises(ValueError, match=r"^invalid latency_s -1\.0$"):
        store.apply(ok(latency_s=-1.0))
    with pytest.raises(ValueError, match=r"^invalid ttft_s nan$"):
        store.apply(ok(ttft_s=math.nan))
    assert store.summary()["total_requests"] == 0

    store.apply(GaugeSet(MAILBOX_DEPTH, {"actor": "router"}, 1))
    with pytest.raises(ValueError, match=r"^gauge 'mailbox_depth' takes labels \['actor'\]"):
        store.apply(GaugeSet(MAILBOX_DEPTH, {"provider": "openai"}, 1))
    with pytest.raises(ValueError, match=r"^invalid gauge name 'breaker_state'$"):
        store.apply(GaugeSet("breaker_state", {}, 1))
    with pytest.raises(ValueError, match=r"^invalid gauge name 'bad name'$"):
        store.apply(GaugeSet("bad name", {}, 1))


def test_prometheus_text_parses_with_conventional_names() -> None:
    store = MetricsStore()
    store.apply(ok(latency_s=0.25))
    store.apply(ok(latency_s=0.75, error_type="LLMTimeoutError", ttft_s=None))
    store.apply(FallbackTaken("openai", "gpt-4o-mini", "openrouter", "x/y", "timeout"))
    store.apply(BreakerTransition("openai", "closed", "open"))
    store.apply(ActorRestarted("provider:openai"))
    store.apply(GaugeSet(POOL_CONNECTIONS_IN_USE, {"provider": "openai"}, 2))
    store.record_dropped()

    text = store.prometheus_text().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name: str, **labels: str) -> float:
        (match,) = [
            s.value
            for f in families.values()
            for s in f.samples
            if s.name == name and s.labels == labels
        ]
        return match

    pm = {"provider": "openai", "model": "gpt-4o-mini"}
    assert families["mcp_backend_llm_requests"].type == "counter"
    assert value("mcp_backend_llm_requests_total", **pm, outcome="success") == 1
    assert value("mcp_backend_llm_requests_total", **pm, outcome="error") == 1
    assert families["mcp_backend_llm_request_duration_seconds"].type == "histogram"
    assert value("mcp_backend_llm_request_duration_seconds_count", **pm) == 2
    assert value("mcp_backend_llm_request_duration_seconds_sum", **pm) == 1.0
    assert value("mcp_backend_llm_request_duration_seconds_bucket", **pm, le="+Inf") == 2
    assert value("mcp_backend_llm_time_to_first_token_seconds_count", **pm) == 1
    assert value("mcp_backend_llm_tokens_total", **pm, direction="input") == 20
    assert value("mcp_backend_llm_tokens_total", **pm, direction="output") == 10
    assert value("mcp_backend_llm_cost_usd_total", **pm) == pytest.approx(0.002)
    assert value("mcp_backend_llm_errors_total", **pm, type="LLMTimeoutError") == 1
    assert value("mcp_backend_breaker_transitions_total", provider="openai", state="open") == 1
    assert value("mcp_backend_breaker_state", provider="openai", state="open") == 1
    assert value("mcp_backend_actor_restarts_total", actor="provider:openai") == 1
    assert value("mcp_backend_metrics_events_dropped_total") == 1
    assert value("mcp_backend_pool_connections_in_use", provider="openai") == 2
    assert families["mcp_backend_pool_connections_in_use"].type == "gauge"
    fallback = {
        "from_provider": "openai",
        "from_model": "gpt-4o-mini",
        "to_provider": "openrouter",
        "to_model": "x/y",
        "reason": "timeout",
    }
    assert value("mcp_backend_llm_fallbacks_total", **fallback) == 1


def test_exported_buckets_are_cumulative_and_exact_at_their_bounds() -> None:
    store = MetricsStore()
    rng = random.Random(7)
    samples = [rng.uniform(0.001, 10.0) for _ in range(500)]
    for s in samples:
        store.apply(ok(latency_s=s))

    text = store.prometheus_text().decode()
    buckets = [
        sample
        for f in text_string_to_metric_families(text)
        for sample in f.samples
        if sample.name == "mcp_backend_llm_request_duration_seconds_bucket"
    ]
    values = [b.value for b in buckets]
    assert values == sorted(values)
    assert 20 <= len(buckets) <= 40
    for b in buckets:
        le = float(b.labels["le"])
        assert b.value == sum(1 for x in samples if x <= le)


def test_model_labels_from_upstream_are_bounded_with_the_rest_counted_as_other() -> None:
    store = MetricsStore(models=["gpt-4o-mini"], max_models=3)
    names = [f"upstream-model-{i}" for i in range(500)]
    for name in names:
        store.apply(ok("sim", name))
    store.apply(ok("sim", "gpt-4o-mini"))  # configured: its own label even after the cap
    store.apply(ok("sim", "upstream-model-1"))  # one of the first three: still its own
    store.apply(FallbackTaken("sim", "upstream-model-499", "backup", "upstream-model-0", "error"))

    by_model = store.summary()["by_model"]
    assert sorted(by_model) == [
        "sim:gpt-4o-mini", "sim:other", "sim:upstream-model-0", "sim:upstream-model-1",
        "sim:upstream-model-2",
    ]
    assert [by_model[key]["total_requests"] for key in sorted(by_model)] == [1, 497, 1, 2, 1]
    assert by_model["sim:other"]["fallbacks"] == 1
    families = {
        f.name: f for f in text_string_to_metric_families(store.prometheus_text().decode())
    }
    labels = {s.labels["model"] for s in families["mcp_backend_llm_requests"].samples}
    assert labels == {"gpt-4o-mini", "other", "upstream-model-0", "upstream-model-1",
                      "upstream-model-2"}
    (fallback,) = families["mcp_backend_llm_fallbacks"].samples
    assert (fallback.labels["from_model"], fallback.labels["to_model"]) == (
        "other", "upstream-model-0")


def test_the_default_store_keeps_32_unconfigured_model_names() -> None:
    store = MetricsStore()
    for i in range(40):
        store.apply(ok("sim", f"m{i}"))
    by_model = store.summary()["by_model"]
    assert len(by_model) == 33
    assert by_model["sim:other"]["total_requests"] == 8
