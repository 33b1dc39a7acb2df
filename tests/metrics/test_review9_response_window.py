"""Review 9: ``avg_response_time`` as the specification computes it (section 8, "Monitoring and
Observability"): each ``provider:model`` keeps its last 100 response times, and the summary's
average is the mean of every kept time, pooled (``all_times.extend(times)`` over the models, then
``sum(all_times) / len(all_times)``), not a mean of per-model means. The histograms and
percentiles still count every request.

Times are multiples of 125 ms, so seconds and milliseconds are exact binary fractions and every
expected value below is exact (also as the specification's own code computes it).
"""

from __future__ import annotations

import tracemalloc
from collections import defaultdict
from fractions import Fraction

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.llm.client_api import LLMMetrics
from actors.metrics import MetricsStore, RequestFinished

WINDOW = 100


def _spec_average(records: list[tuple[str, float]]) -> float:
    """The specification's code, verbatim in what it keeps and how it averages (ms)."""
    response_times: defaultdict[str, list[float]] = defaultdict(list)
    for key, response_time_ms in records:
        response_times[key].append(response_time_ms)
        if len(response_times[key]) > 100:
            response_times[key] = response_times[key][-100:]
    all_times: list[float] = []
    for times in response_times.values():
        all_times.extend(times)
    return sum(all_times) / len(all_times) if all_times else 0.0


def _records() -> list[tuple[str, str, float]]:
    """Three models with 250, 20 and 8 requests (ms); interleaved, the first one's times vary."""
    records = [("openai", "gpt-4o", 125.0 * (i % 7 + 1) + (10_000.0 if i < 150 else 0.0))
               for i in range(250)]
    records[60:60] = [("openrouter", "openai/gpt-4o-mini", 1000.0)] * 20
    records[200:200] = [("openai", "o4-mini", 2000.0)] * 8
    return records


def _finished(provider: str, model: str, latency_s: float) -> RequestFinished:
    return RequestFinished(provider=provider, model=model, latency_s=latency_s, ttft_s=None,
                           prompt_tokens=1, completion_tokens=1, cost=0.0)


def test_the_summary_average_pools_the_last_100_times_of_each_model() -> None:
    records = _records()
    metrics = LLMMetrics()
    for provider, model, ms in records:
        metrics.record_request(provider, model, 2, None, ms)

    kept = [125 * (i % 7 + 1) for i in range(150, 250)] + [1000] * 20 + [2000] * 8
    expected = Fraction(sum(kept), len(kept))  # 128 times kept of 278 recorded
    assert expected == Fraction(86_125, 128)
    assert metrics.get_summary()["avg_response_time"] == float(expected) == 672.8515625
    assert _spec_average([(f"{p}:{m}", ms) for p, m, ms in records]) == 672.8515625
    # Neither the mean of every time nor the mean of the per-model means.
    assert float(expected) != sum(ms for *_, ms in records) / len(records)
    assert float(expected) != (float(Fraction(sum(kept[:100]), 100)) + 1000 + 2000) / 3


def test_each_models_average_is_over_its_last_100_times_and_in_seconds() -> None:
    store = MetricsStore()
    for provider, model, ms in _records():
        store.apply(_finished(provider, model, ms / 1000))
    summary = store.summary()
    by_model = summary["by_model"]
    assert by_model["openai:gpt-4o"]["avg_response_time"] == 0.50125  # 50.125 s over 100
    assert by_model["openai:gpt-4o"]["total_requests"] == 250
    assert by_model["openrouter:openai/gpt-4o-mini"]["avg_response_time"] == 1.0
    assert by_model["openai:o4-mini"]["avg_response_time"] == 2.0
    assert summary["avg_response_time"] == 0.6728515625


def test_the_histograms_still_count_every_request() -> None:
    store = MetricsStore()
    for provider, model, ms in _records():
        store.apply(_finished(provider, model, ms / 1000))
    families = {f.name: f for f in
                text_string_to_metric_families(store.prometheus_text().decode())}
    samples = {(s.name, s.labels.get("model")): s.value
               for s in families["mcp_backend_llm_request_duration_seconds"].samples
               if s.name.endswith(("_count", "_sum"))}
    seconds = sum(ms for _, m, ms in _records() if m == "gpt-4o") / 1000
    assert samples[("mcp_backend_llm_request_duration_seconds_count", "gpt-4o")] == 250
    assert samples[("mcp_backend_llm_request_duration_seconds_sum", "gpt-4o")] == (
        pytest.approx(seconds, rel=1e-12))
    # The overall percentiles are over every request too: 150 of 278 took more than 10 s.
    assert store.summary()["latency_p50"] > 10.0


def test_the_kept_times_are_a_fixed_ring_of_100_per_label() -> None:
    store = MetricsStore(max_models=2)
    for i in range(1000):
        store.apply(_finished("sim", f"m{i % 5}", 0.25))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(20_000):
            store.apply(_finished("sim", f"m{i % 5}", 0.125 * (i % 3)))
        grown = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before, "filename")
                    if d.traceback[0].filename.endswith(("_store.py", "_tallies.py",
                                                         "_histogram.py")))
    finally:
        tracemalloc.stop()
    assert grown < 4096, grown  # a list of the 20,000 times would be ~640 kB
    # m0 and m1 have their own label; m2, m3 and m4 share ``other``, and one window.
    by_model = store.summary()["by_model"]
    assert sorted(by_model) == ["sim:m0", "sim:m1", "sim:other"]
    assert by_model["sim:other"]["total_requests"] == 12_600
    # Its last 100 times: the second loop's, from i = 19,999 down, of those with i % 5 >= 2.
    kept = [i for i in range(20_000)[::-1] if i % 5 >= 2][:WINDOW]
    assert by_model["sim:other"]["avg_response_time"] == (
        float(Fraction(sum(125 * (i % 3) for i in kept), 1000 * WINDOW)))


def test_an_empty_store_averages_zero() -> None:
    assert MetricsStore().summary()["avg_response_time"] == 0.0
    assert LLMMetrics().get_summary()["avg_response_time"] == 0.0
